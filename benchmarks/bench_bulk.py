"""Comparison 7: flowtel's private multi-row upserts vs SQLAlchemy 2's public insertmanyvalues.

The rows the writer commits for N 23-step workflows are rendered once (as in comparison 3).
Then, interleaved round by round on the same database and in the same transactions:

- **bulk**: :func:`exporters.db.bulk.bulk_upsert_rows`, the hand-built path: a multi-row
  ``VALUES`` text spliced from the compiled single-row upsert (SQLite), one ``unnest`` statement
  per table with binary array parameters (PostgreSQL with psycopg), ``executemany`` (MariaDB);
- **insertmanyvalues**: :func:`exporters.db.upsert.upsert_rows`, SQLAlchemy's own batching of
  ``connection.execute(upsert.returning(id), rows)`` into multi-row statements (public API
  only; on MariaDB the same ``executemany``).

The ratio is bulk's time over insertmanyvalues' (above 1: the public path is faster). The
policy it decides: the public path wherever the ratio is at least 0.9 (within 10 %); the
private one only where it pays more than that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from benchmarks.bench_writer import capture_events, render_rows
from benchmarks.common import database_url, interleave, median, ratio_summary, reset_tables
from exporters import make_engine
from exporters.db.bulk import bulk_upsert_rows
from exporters.db.schema import create_schema, metadata
from exporters.db.upsert import upsert_rows

WITHIN = 0.9
"""The public path is used where bulk's time over its own is at least this."""

Rows = list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]


def commit_round(engine: sa.Engine, rendered: Rows, path: Callable[..., Any]) -> float:
    """Seconds to commit every batch of *rendered* through *path*, one transaction each."""
    reset_tables(engine)
    started = time.perf_counter()
    for run_rows, step_rows in rendered:
        with engine.begin() as connection:
            path(connection, run_rows, step_rows)
    return time.perf_counter() - started


def measure(url: str, *, rounds: int, workflows: int) -> dict[str, Any]:
    engine = make_engine(url)
    metadata.drop_all(engine)
    create_schema(engine)
    rendered = render_rows(capture_events(workflows))
    rows = sum(len(r) + len(s) for r, s in rendered)
    for path in (bulk_upsert_rows, upsert_rows):  # warm-up: statement caches, connection
        commit_round(engine, rendered, path)
    results = interleave(
        rounds,
        {
            "bulk": lambda: commit_round(engine, rendered, bulk_upsert_rows),
            "insertmanyvalues": lambda: commit_round(engine, rendered, upsert_rows),
        },
    )
    engine.dispose()
    ratio = ratio_summary(results["bulk"], results["insertmanyvalues"])
    return {
        "database": sa.make_url(url).get_backend_name(),
        "rounds": rounds,
        "rows_per_round": rows,
        "bulk_rows_per_s": rows / median(results["bulk"]),
        "insertmanyvalues_rows_per_s": rows / median(results["insertmanyvalues"]),
        "ratio": ratio,
        "public_path": ratio["median"] >= WITHIN,
    }


def run(backends: list[str], *, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Measure the comparison on every backend in *backends*."""
    rounds = rounds or (2 if quick else 7)
    workflows = 40 if quick else 500
    per_database = {
        backend: measure(database_url(backend, "bulk"), rounds=rounds, workflows=workflows)
        for backend in backends
    }
    worst = min(row["ratio"]["median"] for row in per_database.values())
    return {
        "title": "bulk upsert: private path vs insertmanyvalues",
        "goal": f"insertmanyvalues wherever bulk / insertmanyvalues >= {WITHIN}",
        "target": WITHIN,
        "ratio": worst,
        "met": True,  # a decision, not a goal: see public_path per database
        "databases": per_database,
    }
