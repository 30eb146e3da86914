"""Processes that start together on a new database all record every run.

Four real processes wait for one start file, then call ``configure()`` at the same moment on a
database with no tables yet (a SQLite file that does not exist, or an empty PostgreSQL or
MariaDB database) and record 300 runs each. Repeated three times per backend: no process may
fail in ``configure()`` (a schema another process is still creating is no mismatch), none may
lose, drop or spool a row, and the database ends with all 1,200 runs and their steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exporters.db.schema import workflow_history, workflow_step_history
from tests.conftest import fresh_server_database

ROOT = Path(__file__).resolve().parent.parent
PROCESSES, RUNS, ROUNDS = 4, 300, 3


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A factory of brand-new databases (each call a new one), for each backend."""
    backend = request.param
    with ExitStack() as databases:

        def make(round_: int) -> str:
            if backend == "sqlite":
                return f"sqlite:///{tmp_path / f'round-{round_}' / 'history.db'}"
            return databases.enter_context(fresh_server_database(backend, "flowtel_start"))

        yield make


def _start_together(url: str, start_file: Path) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTEL_SPOOL_DIR": str(start_file.parent)}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.concurrent_start", url, str(start_file), f"p{p}",
             str(RUNS)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(PROCESSES)
    ]  # fmt: skip
    time.sleep(1.0)  # every child imported flowtel and polls for the start file
    start_file.touch()
    return children


def _finish(children: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    reports = []
    try:
        for child in children:
            out, err = child.communicate(timeout=300)
            lines = out.strip().splitlines()
            reports.append(json.loads(lines[-1]) if lines else {"error": err[-2000:]})
            reports[-1]["returncode"] = child.returncode
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    return reports


def _counts(url: str) -> tuple[int, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            runs = connection.execute(sa.select(sa.func.count()).select_from(workflow_history))
            steps = connection.execute(
                sa.select(sa.func.count()).select_from(workflow_step_history)
            )
            return int(runs.scalar_one()), int(steps.scalar_one())
    finally:
        engine.dispose()


def test_four_processes_configuring_a_new_database_at_once_record_all_their_runs(
    new_database: Any, tmp_path: Path
) -> None:
    """Three rounds of four processes at once: none fails, spools or drops; 1,200 runs land."""
    for round_ in range(ROUNDS):
        url = new_database(round_)
        start_file = tmp_path / f"start-{round_}"
        (tmp_path / f"round-{round_}").mkdir(exist_ok=True)
        reports = _finish(_start_together(url, start_file))
        failures = [r for r in reports if r["returncode"] != 0 or r.get("error")]
        assert failures == [], (round_, failures)
        assert _counts(url) == (PROCESSES * RUNS, PROCESSES * RUNS), (round_, reports)
        for report in reports:
            lost = {k: report[k] for k in ("rows_spooled", "events_dropped", "rows_lost")}
            assert set(lost.values()) <= {0}, json.dumps(report)
            assert report["flushed"] is True, json.dumps(report)
