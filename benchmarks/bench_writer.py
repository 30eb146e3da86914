"""Comparison 3: rows per second the history writer commits vs a plain Core multi-row upsert.

The events of N workflows are captured once, exactly as the processor captures them on the
application's thread. Then, interleaved round by round on the same database:

- **writer**: :class:`exporters.history.writer.HistoryWriter` folds them batch by batch (decoding,
  folding per run, rendering rows and the metadata JSON) and commits each batch — the whole of
  the writer thread's work, driven directly so nothing else shares the timing;
- **plain Core**: the very rows the writer produced (rendered beforehand, outside the timing),
  committed with SQLAlchemy Core's own multi-row upsert, in the same transactions, in both of
  Core's forms: ``insert(table).values(rows)`` with the dialect's ``ON CONFLICT``/``ON
  DUPLICATE KEY`` clause, and ``connection.execute(upsert, rows)`` (Core batches that into
  multi-row ``VALUES`` itself, "insertmanyvalues"). The faster of the two is the baseline.

Tables are emptied between rounds outside the timing, so both write the same new rows.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from opentelemetry.sdk.trace import SpanProcessor
from sqlalchemy.dialects import mysql, postgresql, sqlite

from benchmarks.common import (
    STEPS,
    bare_provider,
    database_url,
    interleave,
    median,
    ratio_summary,
    reset_tables,
    run_flowtel_workflows,
)
from exporters import make_engine
from exporters.db.schema import (
    STEP_KEY,
    create_schema,
    metadata,
    workflow_history,
    workflow_step_history,
)
from exporters.db.upsert import UpsertResult
from exporters.history import writer as writer_module
from exporters.history.capture import capture_end, capture_start
from exporters.history.writer import HistoryWriter

GOAL = 0.8
BATCH_EVENTS = 5_000  # the processor's default max_batch_size


class _Capture(SpanProcessor):
    """A span processor that keeps what the history processor would have queued."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        event = capture_start(span)
        if event is not None:
            self.events.append(event)

    def on_end(self, span: Any) -> None:
        event = capture_end(span)
        if event is not None:
            self.events.append(event)


def capture_events(workflows: int) -> list[Any]:
    """The queued events of *workflows* 23-step workflows."""
    provider = bare_provider()
    capture = _Capture()
    provider.add_span_processor(capture)
    run_flowtel_workflows(provider, workflows, prefix="writer")
    return capture.events


def batches(events: list[Any]) -> list[list[Any]]:
    return [events[i : i + BATCH_EVENTS] for i in range(0, len(events), BATCH_EVENTS)]


def render_rows(events: list[Any]) -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """The (run rows, step rows) the writer commits for each batch, rendered once."""
    captured: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = []

    def record(connection: Any, run_rows: Any, step_rows: Any) -> UpsertResult:
        captured.append((list(run_rows), list(step_rows)))
        return UpsertResult(len(run_rows), len(step_rows), 0)

    engine = make_engine("sqlite://")
    original = writer_module.bulk_upsert_rows
    writer_module.bulk_upsert_rows = record  # type: ignore[assignment]
    try:
        writer = HistoryWriter(engine, create_tables=False)
        for batch in batches(events):
            writer.fold(batch)
            assert writer.write()
    finally:
        writer_module.bulk_upsert_rows = original  # type: ignore[assignment]
        engine.dispose()
    return captured


def _core_upsert(
    dialect: str, table: sa.Table, key: tuple[str, ...], rows: list[dict[str, Any]] | None
) -> Any:
    """The dialect's upsert of *table*, with *rows* as its ``VALUES`` (or bound per execution)."""
    if dialect == "mysql":
        stmt = mysql.insert(table)
        stmt = stmt.values(rows) if rows is not None else stmt
        return stmt.on_duplicate_key_update(
            {c.name: stmt.inserted[c.name] for c in table.columns if c.name not in ("id", *key)}
        )
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(table)
    stmt = stmt.values(rows) if rows is not None else stmt
    return stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in ("id", *key)},
    )


def core_values_round(engine: sa.Engine, rendered: list[Any]) -> float:
    """Seconds to commit the rows with Core's ``insert(table).values(rows)`` upsert."""
    reset_tables(engine)
    dialect = engine.dialect.name
    started = time.perf_counter()
    for run_rows, step_rows in rendered:
        with engine.begin() as connection:
            for offset in range(0, len(run_rows), 500):
                chunk = run_rows[offset : offset + 500]
                connection.execute(_core_upsert(dialect, workflow_history, ("run_id",), chunk))
            for offset in range(0, len(step_rows), 1000):
                chunk = step_rows[offset : offset + 1000]
                connection.execute(_core_upsert(dialect, workflow_step_history, STEP_KEY, chunk))
    return time.perf_counter() - started


def core_executemany_round(engine: sa.Engine, rendered: list[Any]) -> float:
    """Seconds to commit the rows with ``connection.execute(upsert, rows)``: Core's
    "insertmanyvalues" batching of one cached statement into multi-row ``VALUES``."""
    reset_tables(engine)
    dialect = engine.dialect.name
    run_statement = _core_upsert(dialect, workflow_history, ("run_id",), None)
    step_statement = _core_upsert(dialect, workflow_step_history, STEP_KEY, None)
    started = time.perf_counter()
    for run_rows, step_rows in rendered:
        with engine.begin() as connection:
            if run_rows:
                connection.execute(run_statement, run_rows)
            if step_rows:
                connection.execute(step_statement, step_rows)
    return time.perf_counter() - started


def writer_round(engine: sa.Engine, events: list[Any]) -> float:
    """Seconds for the history writer to fold, render and commit *events*."""
    reset_tables(engine)
    writer = HistoryWriter(engine, create_tables=False)
    started = time.perf_counter()
    for batch in batches(events):
        writer.fold(batch)
        assert writer.write(), writer.stats
    return time.perf_counter() - started


def measure(url: str, *, rounds: int, workflows: int) -> dict[str, Any]:
    engine = make_engine(url)
    metadata.drop_all(engine)
    create_schema(engine)
    events = capture_events(workflows)
    rendered = render_rows(events)
    rows = sum(len(r) + len(s) for r, s in rendered)  # a run cut by a batch counts twice
    unique_runs = {row["run_id"] for runs, _ in rendered for row in runs}
    unique_steps = {(row["run_id"], row["span_id"]) for _, steps in rendered for row in steps}
    assert (len(unique_runs), len(unique_steps)) == (workflows, workflows * len(STEPS))
    writer_round(engine, events)  # warm-up: statement caches, connection
    core_values_round(engine, rendered)
    core_executemany_round(engine, rendered)
    results = interleave(
        rounds,
        {
            "core_values": lambda: core_values_round(engine, rendered),
            "core_executemany": lambda: core_executemany_round(engine, rendered),
            "writer": lambda: writer_round(engine, events),
        },
    )
    engine.dispose()
    # The faster of Core's two forms is the baseline, round by round. Rows per second: higher
    # is better, so the ratio is the baseline's time over the writer's.
    best = [
        min(pair) for pair in zip(results["core_values"], results["core_executemany"], strict=True)
    ]
    return {
        "database": sa.make_url(url).get_backend_name(),
        "rounds": rounds,
        "rows_per_round": rows,
        "events_per_round": len(events),
        "writer_rows_per_s": rows / median(results["writer"]),
        "core_rows_per_s": rows / median(best),
        "core_values_rows_per_s": rows / median(results["core_values"]),
        "core_executemany_rows_per_s": rows / median(results["core_executemany"]),
        "ratio": ratio_summary(best, results["writer"]),
    }


def run(backends: list[str], *, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Measure comparison 3 on every backend in *backends*."""
    rounds = rounds or (2 if quick else 5)
    workflows = 40 if quick else 500
    per_database = {
        backend: measure(database_url(backend, "writer"), rounds=rounds, workflows=workflows)
        for backend in backends
    }
    worst = min(row["ratio"]["median"] for row in per_database.values())
    return {
        "title": "writer efficiency",
        "goal": f"writer rows/s >= {GOAL}x a plain SQLAlchemy Core multi-row upsert",
        "target": GOAL,
        "ratio": worst,
        "met": worst >= GOAL,
        "databases": per_database,
    }
