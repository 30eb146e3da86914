"""A process that dies: SIGKILL mid-run (reaped as abandoned), SIGKILL while spooling (replayed
at the next start), SIGTERM with the opt-in handler (flushed, the open run cancelled)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner

from exporters import make_engine
from exporters.cli.reap import reap as reap_command
from exporters.db.schema import workflow_history, workflow_step_history
from tests.pg_private import PrivatePostgres
from tests.spawn import spawn

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def child(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Run ``python -m tests.children ARGS``; yield it with its ``ready`` report."""
    process = spawn(
        [sys.executable, "-m", "tests.children", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, process.stderr.read() if process.stderr else "no output"
        yield process, json.loads(line)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def runs_by_status(engine: sa.Engine) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    with engine.connect() as connection:
        for row in connection.execute(sa.select(workflow_history)).mappings():
            found.setdefault(row["status"], []).append(row)
    return found


def steps(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(sa.select(sa.func.count(workflow_step_history.c.id))) or 0)


def reap_silent_for(url: str, seconds: int) -> list[str]:
    """Wait until the dead process's last heartbeat is *seconds* old, then ``flowtel reap``."""
    time.sleep(seconds + 0.3)
    done = CliRunner().invoke(reap_command, ["--db", url, "--older-than", f"{seconds}s", "--json"])
    assert done.exit_code == 0, done.output
    return [run["run_id"] for run in json.loads(done.output)["reaped"]]


def test_sigkill_mid_run_leaves_a_running_row_that_reap_abandons(tmp_path: Path) -> None:
    """Runs completed before the kill are intact; the open one is abandoned by the reaper."""
    url = f"sqlite:///{tmp_path}/h.db"
    with child("crash", url, "--runs", "10") as (process, ready):
        assert ready["flushed"] is True
        process.send_signal(signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL
    engine = make_engine(url)
    found = runs_by_status(engine)
    assert len(found["completed"]) == 10
    (hanging,) = found["running"]
    assert (hanging["run_id"], hanging["pid"]) == (ready["run_id"], ready["pid"])
    assert reap_silent_for(url, 1) == [ready["run_id"]]
    (abandoned,) = runs_by_status(engine)["abandoned"]
    assert f"process {ready['pid']}" in abandoned["metadata"]["abandoned"]["reason"]
    assert abandoned["seq"] == hanging["seq"]
    engine.dispose()


def test_sigkill_while_spooling_then_restart_replays(private_postgres: PrivatePostgres) -> None:
    """Killed during an outage: what was spooled is replayed at the next start, then reaped."""
    url = private_postgres.new_database()
    private_postgres.stop()
    try:
        with child("crash", url, "--runs", "10") as (process, ready):
            assert ready["flushed"] is False and ready["rows_spooled"] >= 10 + 10 * 3 + 2
            process.send_signal(signal.SIGKILL)
            process.wait(10)
    finally:
        private_postgres.start()
    restart = subprocess.run(
        [sys.executable, "-m", "tests.children", "replay", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    replayed = json.loads(restart.stdout)
    assert (replayed["error"], replayed["remaining_files"]) == (None, 0), restart.stderr
    assert replayed["rows"] == ready["rows_spooled"]
    engine = make_engine(url)
    found = runs_by_status(engine)
    assert (len(found["completed"]), len(found["running"])) == (10, 1)
    assert steps(engine) == 10 * 3 + 1
    assert reap_silent_for(url, 1) == [ready["run_id"]]
    engine.dispose()


def test_sigterm_with_the_handler_flushes_and_records_the_open_run_cancelled(
    tmp_path: Path,
) -> None:
    """The opt-in handler flushes, exits 143, and the open run unwinds as ``cancelled``."""
    url = f"sqlite:///{tmp_path}/h.db"
    with child("sigterm", url, "--runs", "5") as (process, ready):
        started = dt.datetime.now(dt.UTC)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 128 + signal.SIGTERM
    engine = make_engine(url)
    found = runs_by_status(engine)
    assert len(found["completed"]) == 5 and "running" not in found
    (cancelled,) = found["cancelled"]
    assert cancelled["run_id"] == ready["run_id"]
    assert cancelled["completed_at"] >= started - dt.timedelta(seconds=1)
    engine.dispose()
