"""Retention: ``prune`` and ``flowtel db prune`` delete old runs and their steps, never active ones.

Runs of every status are written directly into the history tables of SQLite, PostgreSQL and
MariaDB at fixed ages around a fixed clock, each with two step rows; the tests check which
runs and steps remain, the batch count, the status filter, the dry run, and the refusals.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from exporters import make_engine
from exporters.cli.db import db
from exporters.db.check import prepare_schema
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.ops.retention import PruneResult, prune

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
OLD, RECENT = NOW - dt.timedelta(days=100), NOW - dt.timedelta(days=10)
RUNS: dict[str, tuple[str, dt.datetime | None]] = {
    "old-completed-1": ("completed", OLD),
    "old-completed-2": ("completed", OLD),
    "old-completed-3": ("completed", OLD),
    "old-failed-1": ("failed", OLD),
    "old-failed-2": ("failed", OLD),
    "old-cancelled": ("cancelled", OLD),
    "old-legacy-success": ("success", OLD),
    "old-running": ("running", OLD),
    "old-pending": ("pending", OLD),
    "recent-completed": ("completed", RECENT),
    "no-start-time": ("completed", None),
}
OLD_FINISHED = {name for name, (status, at) in RUNS.items() if at == OLD} - {
    "old-running",
    "old-pending",
}


def fill(url: str, now: dt.datetime = NOW) -> sa.Engine:
    """The history tables with :data:`RUNS` (times shifted to *now*), two steps each."""
    engine = make_engine(url)
    prepare_schema(engine)
    shift = now - NOW
    runs, steps = [], []
    for n, (run_id, (status, started)) in enumerate(RUNS.items()):
        at = None if started is None else started + shift
        runs.append(
            {"run_id": run_id, "workflow_id": "w", "status": status, "started_at": at}
            | {"steps_completed": 2, "total_steps": 2, "seq": 1}
        )
        for index in (1, 2):
            steps.append(
                {"run_id": run_id, "span_id": f"{n:08x}{index:08x}", "step_index": index}
                | {"step_name": f"s{index}", "attempt": 1, "status": "completed"}
                | {"started_at": at}
            )
    with engine.begin() as connection:
        connection.execute(workflow_history.insert(), runs)
        connection.execute(workflow_step_history.insert(), steps)
    return engine


def remaining(engine: sa.Engine) -> tuple[set[str], set[str]]:
    with engine.connect() as connection:
        runs = set(connection.scalars(sa.select(workflow_history.c.run_id)))
        steps = set(connection.scalars(sa.select(workflow_step_history.c.run_id)))
    return runs, steps


def test_prune_deletes_old_finished_runs_and_their_steps_in_batches(db_url: str) -> None:
    engine = fill(db_url)
    result = prune(engine, dt.timedelta(days=90), batch_size=3, now=NOW)
    runs, steps = remaining(engine)
    engine.dispose()
    assert result == PruneResult(
        cutoff=NOW - dt.timedelta(days=90),
        status=None,
        runs_deleted=len(OLD_FINISHED),
        steps_deleted=2 * len(OLD_FINISHED),
        batches=3,
        dry_run=False,
    )
    kept = set(RUNS) - OLD_FINISHED
    assert runs == steps == kept
    assert {"old-running", "old-pending", "recent-completed", "no-start-time"} == kept


def test_prune_with_a_status_deletes_only_that_status(db_url: str) -> None:
    engine = fill(db_url)
    result = prune(engine, dt.timedelta(days=90), status="failed", now=NOW)
    runs, steps = remaining(engine)
    engine.dispose()
    assert (result.runs_deleted, result.steps_deleted, result.batches) == (2, 4, 1)
    assert runs == steps == set(RUNS) - {"old-failed-1", "old-failed-2"}


def test_a_dry_run_counts_and_deletes_nothing(db_url: str) -> None:
    engine = fill(db_url)
    result = prune(engine, dt.timedelta(days=90), dry_run=True, now=NOW)
    runs, steps = remaining(engine)
    engine.dispose()
    assert (result.runs_deleted, result.steps_deleted, result.batches) == (7, 14, 0)
    assert result.dry_run and runs == steps == set(RUNS)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"older_than": dt.timedelta(0)}, "older_than must be positive"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"status": "running"}, "never deletes 'running' runs"),
        ({"status": "pending"}, "never deletes 'pending' runs"),
    ],
)
def test_prune_refuses_bad_arguments(arguments: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"older_than": dt.timedelta(days=1)} | arguments
    with pytest.raises(ValueError, match=message):
        prune(sa.create_engine("sqlite://"), **options)


def test_the_prune_command(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/history.db"
    fill(url, now=dt.datetime.now(dt.UTC)).dispose()
    runner = CliRunner()
    base = ["prune", "--db", url, "--older-than", "90d"]
    dry = runner.invoke(db, [*base, "--dry-run"])
    assert dry.exit_code == 0 and dry.output.startswith("Would delete 7 runs and 14 steps")
    done = runner.invoke(db, [*base, "--status", "completed", "--batch-size", "2", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["runs_deleted"], report["steps_deleted"], report["batches"]) == (3, 6, 2)
    assert report["status"] == "completed" and report["cutoff"].endswith("Z")
    refused = runner.invoke(db, [*base, "--status", "running"])
    assert refused.exit_code == 2 and "never pruned" in refused.output
    bad = runner.invoke(db, ["prune", "--db", url, "--older-than", "soon"])
    assert bad.exit_code == 2 and "is not a duration" in bad.output
