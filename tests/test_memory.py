"""Memory during an outage: 100,000 events with the database down stay on disk, not in RAM.

A child process records 2,000 workflows of 24 steps (100,000 events) against a PostgreSQL URL
nobody answers, and reports how much its resident memory grew (peak, ``VmHWM``). The stated
bound is 32 MiB: the queue's worst case at the default ``max_queue_size`` (about 300 bytes per
event), with the writer keeping the state of the active runs only. Measured here: about 6 MiB;
holding the same rows in memory instead (``spool=False``, no step limit) costs about 180 MiB.
Then the spool must hold every run and step, and replaying it must deliver them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from exporters import make_engine
from exporters.db.check import prepare_schema
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.spool.files import spool_directory, spool_key, spool_status
from exporters.spool.replay import Replayer

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql+psycopg://flowtel@127.0.0.1:9/nowhere?connect_timeout=1"
BOUND_KIB = 32 * 1024
WORKFLOWS = 50 + 2_000  # warm-up, then 100,000 events
STEPS = 24


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_100000_events_with_the_database_down(tmp_path: Path) -> None:
    """Resident memory grows by less than 32 MiB; the spool holds and replays everything."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.children", "memory", UNREACHABLE, "--events", "100000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["peak_growth_kib"] < BOUND_KIB, report
    assert report["events_dropped"] == report["steps_dropped"] == report["spool_errors"] == 0

    directory = spool_directory(UNREACHABLE)
    assert directory is not None
    assert spool_status(directory).records == report["rows_spooled"]
    engine = make_engine(f"sqlite:///{tmp_path}/replayed.db")
    prepare_schema(engine)
    replayer = Replayer(directory, spool_key(UNREACHABLE))
    while replayer.replay_chunk(engine):
        pass
    assert replayer.rows_replayed == report["rows_spooled"]
    with engine.connect() as connection:
        runs = connection.scalar(
            sa.select(sa.func.count()).where(workflow_history.c.status == "completed")
        )
        steps = connection.scalar(
            sa.select(sa.func.count()).where(workflow_step_history.c.status == "completed")
        )
    assert (runs, steps) == (WORKFLOWS, WORKFLOWS * STEPS)
    assert spool_status(directory).files == 0
    engine.dispose()
