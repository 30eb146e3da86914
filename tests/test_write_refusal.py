"""Write commands check the schema before they touch a database, and refuse in one line.

``flowtel reap``, ``flowtel db prune`` and ``flowtel spool replay`` on a database whose history
tables are the old system's (not upgraded) exit non-zero with one line naming ``flowtel db
upgrade``. On SQLite the file is left byte-identical (same SHA-256) and no ``-wal`` or ``-shm``
file appears: the check runs on a read-only connection, before the writable engine (which
switches a file to WAL) is made. On PostgreSQL and MariaDB the old rows are left as they were.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from exporters.cli import main
from tests.old_model.legacy_db import build_old_database
from tests.test_migrations import empty_url  # noqa: F401 - a database of its own per backend

WRITE_COMMANDS = [
    pytest.param(["reap", "--older-than", "1m"], id="reap"),
    pytest.param(["db", "prune", "--older-than", "1d"], id="prune"),
    pytest.param(["db", "prune", "--older-than", "1d", "--dry-run"], id="prune-dry-run"),
    pytest.param(["spool", "replay"], id="spool-replay"),
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refusal(args: list[str], url: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, [*args, "--db", url])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output.strip().splitlines()


@pytest.mark.parametrize("args", WRITE_COMMANDS)
def test_refused_write_leaves_an_old_sqlite_file_byte_identical_without_wal(
    tmp_path: Path, args: list[str]
) -> None:
    """On an un-upgraded SQLite file: non-zero exit, one line naming flowtel db upgrade,
    the file's SHA-256 unchanged and no -wal or -shm file beside it."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    build_old_database(url, count=20)
    before = _digest(path)
    status, lines = _refusal(args, url)
    assert status != 0
    assert len(lines) == 1, lines
    assert "flowtel db upgrade" in lines[0]
    assert "OperationalError" not in lines[0]
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.db"]


@pytest.mark.parametrize("args", WRITE_COMMANDS)
def test_refused_write_leaves_the_old_rows_on_every_backend(
    empty_url: str,  # noqa: F811 - the fixture
    args: list[str],
) -> None:
    """On every database an old table is refused in one line naming the fix; its rows stay."""
    db_url = empty_url
    build_old_database(db_url, count=20)
    engine = sa.create_engine(db_url)
    query = sa.text("SELECT * FROM workflow_history ORDER BY id")
    try:
        with engine.connect() as conn:
            before = conn.execute(query).all()
        status, lines = _refusal(args, db_url)
        with engine.connect() as conn:
            after = conn.execute(query).all()
    finally:
        engine.dispose()
    assert (status != 0, len(lines)) == (True, 1), lines
    assert "flowtel db upgrade" in lines[0]
    assert after == before


def test_reap_on_a_current_schema_still_switches_the_file_to_wal(tmp_path: Path) -> None:
    """The check costs nothing to a usable file: reap runs and answers as before."""
    url = f"sqlite:///{tmp_path / 'ok.db'}"
    upgrade = CliRunner().invoke(main, ["db", "upgrade", "--db", url])
    assert upgrade.exit_code == 0, upgrade.output
    result = CliRunner().invoke(main, ["reap", "--older-than", "1m", "--db", url])
    assert result.exit_code == 0, result.output
    assert "No running run" in result.output
