"""CPU cost of flowtel's internal hot spots, for before/after comparisons of one change.

``python -m benchmarks.bench_internals [--workflows N] [--db URL ...]`` prints one JSON line:

- ``capture_start_us``/``capture_end_us``: the processor's capture of a step span on the
  caller's thread; ``decode_end_us``: turning the captured end back into an event on the
  writer's;
- per database, per 23-step workflow: ``fold_render`` (the writer's ``fold`` and ``write``
  with the SQL call left out: decode, fold, render and sanitize rows) and ``bind_sql`` (bind
  processing, statements and commits of those rows), CPU time of the thread doing it.

Run it in the tree before a change and in the tree after, one after the other, a few times:
CPU time (``time.thread_time``) is far steadier than wall time on a shared machine. The suite
(``python -m benchmarks``) measures the end-to-end effect.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import timeit
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from opentelemetry.sdk.trace import TracerProvider

from benchmarks.bench_writer import capture_events, render_rows
from benchmarks.common import available_backends, database_url, reset_tables
from exporters import make_engine
from exporters.db import bulk
from exporters.db.schema import create_schema, metadata
from exporters.history.capture import capture_end, capture_start, decode

CPU = time.thread_time


def _best_us(function: Any, number: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=5, timer=CPU)) / number * 1e6


def capture_costs() -> dict[str, float]:
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("bench")
    span = tracer.start_span(
        "step",
        attributes={
            "workflow.run_id": "run",
            "workflow.step.name": "step",
            "workflow.step.index": 1,
            "workflow.step.attempt": 1,
        },
    )
    span.set_attribute("workflow.step.status", "completed")
    span.end()
    ended = span._readable_span()
    raw_end = capture_end(ended)
    return {
        "capture_start_us": _best_us(lambda: capture_start(span), 100_000),
        "capture_end_us": _best_us(lambda: capture_end(ended), 100_000),
        "decode_end_us": _best_us(lambda: decode(raw_end), 100_000),
    }


def writer_costs(url: str, events: list[Any], workflows: int) -> dict[str, float]:
    engine = make_engine(url)
    metadata.drop_all(engine)
    create_schema(engine)
    rendered = render_rows(events)

    def fold_render() -> float:  # the writer's own fold + write, with the SQL left out
        started = CPU()
        render_rows(events)
        return (CPU() - started) / workflows * 1e6

    def bind_sql() -> float:
        reset_tables(engine)
        started = CPU()
        for run_rows, step_rows in rendered:
            with engine.begin() as connection:
                bulk.bulk_upsert_rows(connection, run_rows, step_rows)
        return (CPU() - started) / workflows * 1e6

    fold_render()  # warm-up
    bind_sql()
    figures = {
        "fold_render_us_per_wf": statistics.median(fold_render() for _ in range(5)),
        "bind_sql_us_per_wf": statistics.median(bind_sql() for _ in range(5)),
    }
    engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=300)
    parser.add_argument("--db", action="append", help="database URL (default: every backend)")
    args = parser.parse_args()
    urls = args.db or [database_url(b, "internals") for b in available_backends()]
    result: dict[str, Any] = capture_costs()
    events = capture_events(args.workflows)
    for url in urls:
        backend = url.split(":", 1)[0].split("+", 1)[0]
        for key, value in writer_costs(url, events, args.workflows).items():
            result[f"{backend}_{key}"] = value
    print(json.dumps({k: round(v, 2) for k, v in result.items()}))


if __name__ == "__main__":
    main()
