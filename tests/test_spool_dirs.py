"""Spool directories are private: created 0700 whatever the umask, and refused when not ours.

A file planted in a spool directory would be replayed into the audit trail, so an existing one
that another user owns or that its group or others may write is refused, for spooling and for
replay, with :class:`~exporters.SpoolDirectoryError`.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from exporters import (
    FlowtelError,
    SpoolDirectoryError,
    WorkflowHistorySpanProcessor,
    create_schema,
    make_engine,
)
from exporters.db.schema import workflow_history
from exporters.spool.files import Spool, spool_directory, spool_files, spool_key
from exporters.spool.replay import Replayer, replay_spool
from tests.test_spool import run_row, step_row

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
URL = "postgresql+psycopg://u:pw@db.example/history"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_0() -> Iterator[None]:
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_every_directory_flowtel_creates_is_0700_under_umask_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_0: None
) -> None:
    """~/.cache, ~/.cache/flowtel, …/spool and the spool itself; and a spool root given by the
    user with the parents flowtel makes for it (all came out 0777 under umask 0)."""
    monkeypatch.delenv("FLOWTEL_SPOOL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    cached = spool_directory(URL)
    assert cached is not None
    Spool(cached, spool_key(URL)).append([run_row(1)], [step_row(1)])
    made = [tmp_path / "home", tmp_path / "home" / ".cache"]
    made += [tmp_path / "home" / ".cache" / "flowtel", cached.parent, cached]
    assert {str(p): _mode(p) for p in made} == {str(p): 0o700 for p in made}

    root = tmp_path / "given" / "root"
    given = spool_directory(URL, root)
    assert given is not None
    Spool(given, spool_key(URL)).append([run_row(2)], [step_row(2)])
    made = [tmp_path / "given", root, given]
    assert {str(p): _mode(p) for p in made} == {str(p): 0o700 for p in made}
    assert [_mode(p) for p in spool_files(given)] == [0o600]


@pytest.mark.parametrize("problem", ["world-writable", "group-writable", "owned by nobody"])
def test_a_spool_directory_others_can_write_is_refused(tmp_path: Path, problem: str) -> None:
    """Neither spooled to nor replayed from; the error says why and what to do."""
    directory = tmp_path / "spool"
    other = tmp_path / "made-elsewhere"
    Spool(other, "k").append([run_row(1)], [step_row(1)])
    directory.mkdir()
    shutil.copy(spool_files(other)[0], directory / spool_files(other)[0].name)
    if problem == "owned by nobody":
        if os.geteuid() != 0:
            pytest.skip("chown to another user needs root (run the suite as root, as CI does)")
        nobody = pwd.getpwnam("nobody")
        os.chmod(directory, 0o700)
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        reason = f"belongs to uid {nobody.pw_uid}"
    else:
        mode = 0o777 if problem == "world-writable" else 0o770
        os.chmod(directory, mode)
        reason = f"mode {mode:04o}"
    with pytest.raises(SpoolDirectoryError, match=reason) as refused:
        Spool(directory, "k").append([run_row(2)], [step_row(2)])
    assert isinstance(refused.value, FlowtelError) and isinstance(refused.value, PermissionError)
    assert "chmod 700" in str(refused.value) and str(directory) in str(refused.value)
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    create_schema(engine)
    with pytest.raises(SpoolDirectoryError):
        Replayer(directory, "k").replay_chunk(engine)
    engine.dispose()


def test_the_writer_does_not_replay_a_planted_spool_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A forged spool file in a world-writable spool directory never reaches the history."""
    url = f"sqlite:///{tmp_path}/h.db"
    root = tmp_path / "root"
    directory = spool_directory(url, root)
    assert directory is not None
    forged = tmp_path / "forged"
    Spool(forged, spool_key(url)).append([run_row(666)], [])
    directory.mkdir(parents=True)
    os.chmod(directory, 0o777)
    shutil.copy(spool_files(forged)[0], directory / spool_files(forged)[0].name)
    caplog.set_level(logging.ERROR, logger="flowtel")
    engine = make_engine(url)
    processor = WorkflowHistorySpanProcessor(engine, spool_dir=str(root), heartbeat_interval=0.05)
    TracerProvider(shutdown_on_exit=False).add_span_processor(processor)
    try:
        assert processor.force_flush(10_000)
        deadline = time.monotonic() + 5
        while "refuses the spool directory" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "refuses the spool directory" in caplog.text
        with engine.connect() as connection:
            ids = connection.execute(sa.select(workflow_history.c.run_id)).scalars().all()
        assert "run-666" not in ids
        assert processor.stats["rows_replayed"] == 0
    finally:
        processor.shutdown(5_000)
        engine.dispose()


def test_replay_spool_reports_a_refused_directory_without_raising(tmp_path: Path) -> None:
    """`flowtel spool replay` and configure()'s start-up replay get the refusal as their error,
    the planted file stays where it is, counted."""
    url = f"sqlite:///{tmp_path}/h.db"
    root = tmp_path / "root"
    directory = spool_directory(url, root)
    assert directory is not None
    Spool(tmp_path / "forged", spool_key(url)).append([run_row(7)], [])
    directory.mkdir(parents=True)
    os.chmod(directory, 0o770)
    planted = spool_files(tmp_path / "forged")[0]
    shutil.copy(planted, directory / planted.name)
    engine = make_engine(url)
    result = replay_spool(engine, root)
    engine.dispose()
    assert result.error is not None and "SpoolDirectoryError" in result.error
    assert (result.rows, result.remaining_files) == (0, 1)
