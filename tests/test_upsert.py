"""Upserts are idempotent and monotonic: replays, duplicates and reordering change nothing."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import sqlalchemy as sa

from exporters import create_schema, make_engine
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.db.upsert import upsert_rows

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


def run_row(seq: int, status: str, steps: int, **extra: Any) -> dict[str, Any]:
    """A complete run snapshot with the given sequence number."""
    row = {c.name: None for c in workflow_history.columns if c.name != "id"}
    row.update(
        run_id="run-1",
        workflow_id="provision_srv-1",
        workflow_name="provision_server",
        status=status,
        started_at=NOW,
        steps_completed=steps,
        total_steps=3,
        seq=seq,
        metadata={"steps": steps, "quote": 'it\'s "quoted"; DROP TABLE x; --'},
    )
    row.update(extra)
    return row


def step_row(status: str, message: str | None = None) -> dict[str, Any]:
    """A step snapshot for one span id."""
    row = {c.name: None for c in workflow_step_history.columns if c.name != "id"}
    row.update(
        run_id="run-1",
        span_id="00f067aa0ba902b7",
        step_index=1,
        step_name="select_machine",
        attempt=1,
        status=status,
        started_at=NOW,
        message=message,
    )
    return row


def read(engine: sa.Engine) -> tuple[list[Any], list[Any]]:
    with engine.connect() as connection:
        runs = connection.execute(sa.select(workflow_history)).all()
        steps = connection.execute(sa.select(workflow_step_history)).all()
    return runs, steps


def test_snapshots_in_any_order_leave_the_newest(db_url: str) -> None:
    """Applying the same snapshots shuffled and twice gives the same final row."""
    engine = make_engine(db_url)
    create_schema(engine)
    snapshots = [
        run_row(10, "running", 0),
        run_row(11, "running", 1),
        run_row(12, "running", 2),
        run_row(13, "completed", 3, completed_at=NOW),
    ]
    steps = [step_row("running"), step_row("completed", "done")]
    order = snapshots * 2
    random.Random(4).shuffle(order)
    for snapshot in order:
        with engine.begin() as connection:
            upsert_rows(connection, [snapshot], [])
    for step in reversed(steps):
        with engine.begin() as connection:
            upsert_rows(connection, [], [step])
    runs, step_rows = read(engine)
    assert [(r.status, r.steps_completed, r.seq) for r in runs] == [("completed", 3, 13)]
    assert runs[0].metadata == snapshots[-1]["metadata"]
    assert [(s.status, s.message) for s in step_rows] == [("completed", "done")]
    engine.dispose()


def test_final_status_is_never_replaced_but_abandoned_is(db_url: str) -> None:
    """A final row ignores newer snapshots; an abandoned row takes the owner's late write."""
    engine = make_engine(db_url)
    create_schema(engine)
    with engine.begin() as connection:
        upsert_rows(connection, [run_row(5, "running", 1)], [])
        connection.execute(sa.update(workflow_history).values(status="abandoned"))
        upsert_rows(connection, [run_row(6, "failed", 1)], [])
        upsert_rows(connection, [run_row(7, "running", 2)], [])
    runs, _ = read(engine)
    assert [(r.status, r.seq) for r in runs] == [("failed", 6)]
    engine.dispose()
