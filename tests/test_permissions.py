"""Files flowtel creates are private: SQLite database and WAL files 0600, directories 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from instrumentation import workflow_run

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022], ids=["umask-000", "umask-022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a permissive umask (000) and the usual one (022)."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _record_one_run(url: str, provider: TracerProvider) -> sa.Engine:
    engine = make_engine(url)
    processor = WorkflowHistorySpanProcessor(engine)
    provider.add_span_processor(processor)
    with workflow_run("wf", tracer_provider=provider):
        pass
    assert processor.force_flush(10_000), processor.stats
    return engine


def test_database_wal_and_directories_are_private(tmp_path: Path, umask: int) -> None:
    """New directories 0700, the database, -wal and -shm 0600, whatever the umask."""
    directory = tmp_path / "new" / "nested"
    database = directory / "history.db"
    provider = TracerProvider()
    engine = _record_one_run(f"sqlite:///{database}", provider)
    with engine.connect() as connection:  # holds the WAL open while we look
        connection.execute(sa.text("SELECT 1"))
        files = sorted(p.name for p in directory.iterdir())
        assert files == ["history.db", "history.db-shm", "history.db-wal"]
        for name in files:
            assert _mode(directory / name) == 0o600, name
    assert _mode(directory) == 0o700
    assert _mode(tmp_path / "new") == 0o700
    engine.dispose()
    provider.shutdown()


def test_existing_files_and_directories_keep_their_modes(tmp_path: Path) -> None:
    """A database or directory the user made is not flowtel's to change."""
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    database = directory / "history.db"
    database.touch()
    os.chmod(database, 0o640)
    make_engine(f"sqlite:///{database}").dispose()
    assert _mode(directory) == 0o755
    assert _mode(database) == 0o640


def test_relative_path_in_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    """The default kind of URL (a file in the working directory) is created 0600 too."""
    monkeypatch.chdir(tmp_path)
    os.chmod(tmp_path, 0o750)
    make_engine("sqlite:///flowtel.db").dispose()
    assert _mode(tmp_path / "flowtel.db") == 0o600
    assert _mode(tmp_path) == 0o750  # the working directory is not ours to change
