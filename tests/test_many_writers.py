"""Many writers at once: processes and threads on one database, every run exactly once.

Four processes of four threads each record 50 workflows apiece (800 runs, 2,400 steps) into one
PostgreSQL or MariaDB database, racing from the very first statement (they create the schema
together). On SQLite, writers in several processes wait for each other in the busy handler:
the test holds the write lock while they start, and none of them may fail or spool.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exporters import make_engine
from exporters.db.schema import metadata, workflow_history, workflow_step_history
from tests.spawn import spawn
from tests.test_outage import write_locked

ROOT = Path(__file__).resolve().parent.parent


def start_writers(url: str, processes: int, threads: int, runs: int) -> list[subprocess.Popen[str]]:
    options = ["--threads", str(threads), "--runs", str(runs)]
    return [
        spawn(
            [sys.executable, "-m", "tests.children", "writers", url, f"p{p}", *options],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]


def finish(children: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports.append(json.loads(out.splitlines()[-1]))
    return reports


def count_where(condition: Any) -> Any:
    return sa.func.sum(sa.case((condition, 1), else_=0))


def check(url: str, expected_runs: int) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        runs = connection.execute(
            sa.select(
                sa.func.count(),
                sa.func.count(sa.distinct(workflow_history.c.workflow_id)),
                count_where(workflow_history.c.status == "completed"),
                count_where(workflow_history.c.steps_completed == 3),
            )
        ).one()
        steps = connection.execute(
            sa.select(sa.func.count(), sa.func.count(sa.distinct(workflow_step_history.c.span_id)))
        ).one()
    engine.dispose()
    assert tuple(runs) == (expected_runs,) * 4
    assert tuple(steps) == (3 * expected_runs,) * 2


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_four_processes_of_four_threads_write_800_runs_exactly_once(
    backend: str, server_database: Any
) -> None:
    """800 runs, 2,400 steps, no duplicate, nothing lost, no write error, nothing spooled."""
    url = str(server_database[backend])
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    reports = finish(start_writers(url, processes=4, threads=4, runs=50))
    for report in reports:
        assert report["flushed"] and report["errors"] == []
        assert report["events_dropped"] == report["rows_spooled"] == 0
    assert sum(r["runs_written"] for r in reports) >= 800
    check(url, 800)


def test_sqlite_writers_in_several_processes_wait_instead_of_failing(tmp_path: Path) -> None:
    """Held out by another connection's write lock, writers wait in the busy handler."""
    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)  # WAL mode, as flowtel leaves the file
    metadata.create_all(engine)
    engine.dispose()
    with write_locked(url) as release:
        children = start_writers(url, processes=3, threads=2, runs=25)
        for child in children:  # every workflow ended, so every writer tried to commit
            assert child.stdout is not None and "started" in child.stdout.readline()
            assert "produced" in child.stdout.readline()
        time.sleep(0.3)
        release()
    reports = finish(children)
    for report in reports:
        assert report["flushed"] and report["errors"] == []
        assert report["write_errors"] == report["rows_spooled"] == 0
    check(url, 150)
