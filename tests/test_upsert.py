"""Upserts are idempotent and monotonic: replays, duplicates and reordering change nothing."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
import sqlalchemy as sa

from exporters import create_schema, make_engine
from exporters.db.bulk import SMALL_BATCH_ROWS, bulk_upsert_rows
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.db.upsert import upsert_rows
from exporters.history.writer import HistoryWriter

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


def test_a_batch_the_database_refuses_half_of_leaves_neither_half(db_url: str) -> None:
    """The writer commits a batch on a connection it keeps (on PostgreSQL in autocommit mode,
    the batch one statement): when the database refuses the step rows, the run rows of the same
    batch are not written either, and a retry of the whole batch writes both."""
    engine = make_engine(db_url)
    create_schema(engine)
    backend = engine.dialect.name
    refuse = {
        "sqlite": [
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON workflow_step_history "
            "WHEN NEW.step_name = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ],
        "postgresql": [
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.step_name = 'poison' THEN RAISE EXCEPTION 'refused'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON workflow_step_history "
            "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        ],
        "mysql": [
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON workflow_step_history "
            "FOR EACH ROW BEGIN IF NEW.step_name = 'poison' THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; END IF; END"
        ],
    }[backend]
    drop = {
        "sqlite": ["DROP TRIGGER refuse_poison"],
        "postgresql": ["DROP TRIGGER refuse_poison ON workflow_step_history",
                       "DROP FUNCTION refuse_poison()"],
        "mysql": ["DROP TRIGGER refuse_poison"],
    }[backend]
    writer = HistoryWriter(engine, create_tables=False)
    with engine.begin() as connection:
        for statement in refuse:
            connection.exec_driver_sql(statement)
    poisoned = {**step_row("completed"), "step_name": "poison"}
    try:
        with pytest.raises(sa.exc.DBAPIError, match="refused"):
            writer._commit([run_row(1, "running", 0)], [poisoned])
        assert read(engine) == ([], [])
        with engine.begin() as connection:
            for statement in drop:
                connection.exec_driver_sql(statement)
        writer._commit([run_row(1, "running", 0)], [poisoned])
        runs, steps = read(engine)
        assert [(r.run_id, r.status) for r in runs] == [("run-1", "running")]
        assert [s.step_name for s in steps] == ["poison"]
    finally:
        writer._release_connection()
        engine.dispose()


def test_small_and_large_batches_store_the_same_rows(db_url: str) -> None:
    """On PostgreSQL a batch of up to ``SMALL_BATCH_ROWS`` rows is bound as ``VALUES`` and a
    larger one as ``unnest`` arrays (elsewhere both are the same statement): the same rows
    written one run and one step at a time, and all in one batch, are stored identically."""
    engine = make_engine(db_url)
    create_schema(engine)
    runs = [
        run_row(n, status, n % 4, run_id=f"run-{n}", error_message="é\n" * n or None,
                completed_at=NOW + dt.timedelta(microseconds=n) if status != "running" else None)
        for n, status in enumerate(["running", "completed", "failed", "cancelled"] * 3, 1)
    ]
    steps = [
        {**step_row("completed" if n % 3 else "failed", message=f"attempt {n} ✓"),
         "run_id": f"run-{n % 12 + 1}", "span_id": f"{n:016x}", "step_index": n,
         "input": {"n": n, "items": [1.5, None, "x"]}, "completed_at": NOW}
        for n in range(1, 32)
    ]
    assert len(runs) + len(steps) > SMALL_BATCH_ROWS >= 2
    with engine.begin() as connection:
        bulk_upsert_rows(connection, runs, steps)
    large = read(engine)
    with engine.begin() as connection:
        connection.execute(workflow_step_history.delete())
        connection.execute(workflow_history.delete())
    for offset in range(max(len(runs), len(steps))):  # one run and one step a batch
        with engine.begin() as connection:
            bulk_upsert_rows(connection, runs[offset : offset + 1], steps[offset : offset + 1])
    small = read(engine)
    engine.dispose()

    def content(rows: list[Any]) -> list[tuple[Any, ...]]:
        return sorted(tuple(r._mapping[k] for k in r._mapping if k != "id") for r in rows)

    assert content(small[0]) == content(large[0]) and len(large[0]) == len(runs)
    assert content(small[1]) == content(large[1]) and len(large[1]) == len(steps)
