"""Commands that read open the database read-only, and say why they cannot read it.

Another application's SQLite file is left byte for byte as it was (before, any reading command
switched it to WAL for good); on PostgreSQL and MariaDB the read engine's sessions refuse writes.
A missing SQLite file, a database without flowtel's tables and the old system's table not yet
upgraded each end with one line naming the cause and ``flowtel db upgrade``, exit status 3.
"""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from exporters.cli import main
from exporters.db.engine import make_engine, make_read_engine
from exporters.db.schema import create_schema
from tests.old_model.legacy_db import build_old_database

READERS = [["runs"], ["show", "abcd1234"], ["stats"], ["tail", "--once"]]
ALL_READERS = [*READERS, ["db", "check"], ["db", "current"]]


def invoke(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


@pytest.fixture
def foreign_sqlite(tmp_path: Path) -> Path:
    """Another application's SQLite file in the default rollback-journal mode."""
    path = tmp_path / "app.db"
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
        connection.execute("INSERT INTO orders (item) VALUES ('bolts')")
        connection.commit()
    return path


@pytest.mark.parametrize("command", ALL_READERS, ids=" ".join)
def test_reading_commands_leave_another_applications_file_unchanged(
    foreign_sqlite: Path, command: list[str]
) -> None:
    before = digest(foreign_sqlite)
    invoke(*command, "--db", f"sqlite:///{foreign_sqlite}")
    assert journal_mode(foreign_sqlite) == "delete"
    assert digest(foreign_sqlite) == before
    assert sorted(p.name for p in foreign_sqlite.parent.iterdir()) == ["app.db"]


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_database_without_flowtels_tables_exits_3_naming_the_fix(
    foreign_sqlite: Path, command: list[str]
) -> None:
    result = invoke(*command, "--db", f"sqlite:///{foreign_sqlite}")
    assert result.exit_code == 3, result.output
    assert "no flowtel history tables" in result.output
    assert "flowtel db upgrade" in result.output
    assert "No runs recorded yet" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_missing_sqlite_file_exits_3_and_is_not_created(
    tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "none.db"
    result = invoke(*command, "--db", f"sqlite:///{path}")
    assert result.exit_code == 3, result.output
    assert "does not exist" in result.output and "flowtel db upgrade" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not path.exists()


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_the_old_systems_table_not_yet_upgraded_exits_3(tmp_path: Path, command: list[str]) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    build_old_database(url, count=5)
    result = invoke(*command, "--db", url)
    assert result.exit_code == 3, result.output
    assert "not been upgraded" in result.output and "flowtel db upgrade" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_history_in_rollback_journal_mode_is_read_and_stays_so(tmp_path: Path) -> None:
    """flowtel's own tables in a file someone keeps in DELETE mode: read, not switched to WAL."""
    path = tmp_path / "history.db"
    create_schema(sa.create_engine(f"sqlite:///{path}"))
    assert journal_mode(path) == "delete"
    result = invoke("runs", "--db", f"sqlite:///{path}")
    assert (result.exit_code, journal_mode(path)) == (0, "delete"), result.output
    assert "No runs recorded yet" in result.output  # the tables are there, only empty


def test_the_read_engine_refuses_writes(db_url: str) -> None:
    """On every backend the read engine's sessions are read-only."""
    writer = make_engine(db_url)
    create_schema(writer)
    engine = make_read_engine(db_url)
    try:
        with engine.connect() as connection:
            count = connection.execute(sa.text("SELECT COUNT(*) FROM workflow_history"))
            assert count.scalar() == 0
        with pytest.raises(sa.exc.DBAPIError), engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE intruder (id INTEGER)"))
    finally:
        engine.dispose()
    with writer.connect() as connection:
        assert not sa.inspect(connection).has_table("intruder")
    writer.dispose()


def test_the_read_engine_never_creates_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    engine = make_read_engine(f"sqlite:///{path}")
    with pytest.raises(sa.exc.OperationalError):
        engine.connect().close()
    assert not path.exists()


def test_every_backend_without_tables_exits_3_and_gets_none(db_url: str) -> None:
    """On SQLite, PostgreSQL and MariaDB: exit 3 naming the fix; no table is created."""
    for command in (["runs"], ["stats"], ["db", "current"]):
        result = invoke(*command, "--db", db_url)
        if command[0] != "db":
            assert result.exit_code == 3, result.output
            assert "flowtel db upgrade" in result.output  # (SQLite: the file does not exist)
    engine = make_engine(db_url)
    with engine.connect() as connection:
        assert not sa.inspect(connection).has_table("workflow_history")
    engine.dispose()
