"""A final status wins over a non-final one whatever ``seq`` (a wall clock) says.

``seq`` comes from wall-clock microseconds, so a run resumed on a host whose clock is behind
writes smaller ``seq`` values than the first host did. Its final status must still land. Among
final statuses the order is fixed: ``failed`` > ``cancelled`` > ``completed``, and the same
status keeps the snapshot with the larger ``seq``. The database guard and the Python fold (the
spool replay's) are one rule: they agree on every order of every snapshot set.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from exporters import create_schema, make_engine
from exporters.db.bulk import bulk_upsert_rows
from exporters.db.check import prepare_schema
from exporters.db.schema import RUN_COLUMNS, workflow_history
from exporters.db.upsert import run_replaces, upsert_rows
from exporters.spool.format import RUN
from exporters.spool.replay import fold_rows
from instrumentation import RunStatus, workflow_run
from tests.conftest import History

_engines: list[sa.Engine] = []


def engine_of(url: str) -> sa.Engine:
    """An engine on *url* with the history tables, disposed after the test."""
    engine = make_engine(url)
    create_schema(engine)
    _engines.append(engine)
    return engine


@pytest.fixture(autouse=True)
def _dispose() -> Iterator[None]:
    yield
    while _engines:
        _engines.pop().dispose()

NOW = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
AHEAD_US = 3_600 * 1_000_000  # the first host's clock was an hour ahead


def run_row(seq: int, status: str, run_id: str = "run-1") -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    row.update(
        run_id=run_id,
        workflow_id="wf",
        status=status,
        started_at=NOW,
        steps_completed=0,
        total_steps=1,
        seq=seq,
        error_message=f"{status}@{seq}",
    )
    return row


def stored(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        query = sa.select(workflow_history.c.status, workflow_history.c.seq).order_by(
            workflow_history.c.run_id
        )
        return [(r.status, r.seq) for r in connection.execute(query)]


@pytest.mark.parametrize("path", [upsert_rows, bulk_upsert_rows])
def test_a_final_status_with_a_smaller_seq_replaces_running(db_url: str, path: Any) -> None:
    engine = engine_of(db_url)
    for snapshot in (run_row(2_000, RunStatus.RUNNING), run_row(1_000, RunStatus.COMPLETED)):
        with engine.begin() as connection:
            path(connection, [snapshot], [])
    with engine.begin() as connection:  # and a late non-final snapshot cannot undo it
        path(connection, [run_row(3_000, RunStatus.RUNNING)], [])
    assert stored(engine) == [(RunStatus.COMPLETED, 1_000)]


SNAPSHOTS = [
    run_row(5, RunStatus.RUNNING),
    run_row(9, RunStatus.ABANDONED),
    run_row(1, RunStatus.COMPLETED),
    run_row(7, RunStatus.COMPLETED),
    run_row(3, RunStatus.CANCELLED),
    run_row(2, RunStatus.FAILED),
    run_row(4, RunStatus.FAILED),
]


def test_the_order_among_final_statuses_is_fixed() -> None:
    assert run_replaces(RunStatus.COMPLETED, 9, RunStatus.FAILED, 1)
    assert run_replaces(RunStatus.COMPLETED, 9, RunStatus.CANCELLED, 1)
    assert run_replaces(RunStatus.CANCELLED, 9, RunStatus.FAILED, 1)
    assert not run_replaces(RunStatus.FAILED, 1, RunStatus.COMPLETED, 9)
    assert run_replaces(RunStatus.COMPLETED, 1, RunStatus.COMPLETED, 2)
    assert not run_replaces(RunStatus.COMPLETED, 2, RunStatus.COMPLETED, 2)
    assert run_replaces(RunStatus.ABANDONED, 9, RunStatus.RUNNING, 10)
    assert not run_replaces(RunStatus.RUNNING, 9, RunStatus.ABANDONED, 9)
    assert not run_replaces(RunStatus.FAILED, 1, RunStatus.RUNNING, 99)


@pytest.mark.parametrize("path", [upsert_rows, bulk_upsert_rows])
def test_database_and_fold_agree_in_every_order(db_url: str, path: Any) -> None:
    """One run per order: each of them ends as failed@4, and the fold says the same."""
    engine = engine_of(db_url)
    orders = random.Random(7).sample(list(itertools.permutations(range(len(SNAPSHOTS)))), 12)
    for number, order in enumerate(orders):
        rows = [dict(SNAPSHOTS[i], run_id=f"run-{number:02d}") for i in order]
        for row in rows:
            with engine.begin() as connection:
                path(connection, [row], [])
        folded, _ = fold_rows([(RUN, row) for row in rows])
        assert [(r["status"], r["seq"]) for r in folded] == [(RunStatus.FAILED, 4)]
    assert stored(engine) == [(RunStatus.FAILED, 4)] * len(orders)


def test_a_run_resumed_on_a_host_whose_clock_is_behind_completes(
    history: History, tracer_provider: TracerProvider
) -> None:
    run_id = "resumed-behind"
    first_host = run_row(0, RunStatus.RUNNING, run_id)
    first_host["seq"] = int(dt.datetime.now(dt.UTC).timestamp() * 1e6) + AHEAD_US
    prepare_schema(history.engine)  # (the writer thread may be creating the tables too)
    with history.engine.begin() as connection:
        upsert_rows(connection, [first_host], [])
    with (
        workflow_run("wf", run_id=run_id, tracer_provider=tracer_provider) as run,
        run.step("rest"),
    ):
        pass
    history.flush()
    assert [r.status for r in history.runs(run_id=run_id)] == [RunStatus.COMPLETED]
