"""Where the writer's CPU goes, phase by phase, in a real run.

``python -m benchmarks.writer_phases [--db URL] [--workflows 1500]``

N 23-step workflows on a provider with only the history processor, recorded as an application
would (the writer and database threads running beside it), until ``force_flush`` says every row
is committed. The writer's methods are wrapped to add up the CPU time (``time.thread_time``) of
the thread that runs them: folding events (``PendingRows.fold``: decode and fold), rendering
rows (``PendingRows.take``: run rows with their metadata, step rows, cleaning), and on the
database thread the upsert (``bulk_upsert_rows``) split into binding each table's parameters
(JSON encoding included) and the rest of each table's statement (the database's own work, on
SQLite in this process); each flowtel thread's whole CPU time over the run comes from
``/proc`` (Linux). Printed in µs per
committed step. The wrappers add a little of their own; compare phases, not runs of other
tools.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from benchmarks.common import STEPS, database_url, provision_run
from exporters import WorkflowHistorySpanProcessor, create_schema, make_engine
from exporters.db import bulk
from exporters.history import pending, writer

CPU: dict[str, float] = {}


def _timed(owner: Any, name: str, label: Callable[[Any], str] | str) -> None:
    """Wrap ``owner.name`` so that its CPU time adds up under *label*."""
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            key = label if isinstance(label, str) else label(args[0])
            CPU[key] = CPU.get(key, 0.0) + time.thread_time() - started

    setattr(owner, name, wrapper)


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user and system) of each of this process's named threads so far, from
    ``/proc`` (Linux; clock ticks)."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[thread.name] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _table(upsert: Any) -> str:
    return "run" if "workflow_id" in upsert.columns else "step"


def instrument() -> None:
    """Wrap the phases."""
    _timed(pending.PendingRows, "fold", "writer: fold (decode, fold)")
    _timed(pending.PendingRows, "take", "writer: render rows (take)")
    _timed(writer, "bulk_upsert_rows", "db: upsert, all of it")
    for form in (bulk.BulkUpsert, bulk.ArrayUpsert):
        _timed(form, "parameters", lambda self: f"db:   {_table(self)} rows, bind parameters")
        _timed(form, "execute", lambda self: f"db:   {_table(self)} rows, bind + statement")
    _timed(bulk.BatchUpsert, "execute", "db:   run and step rows, one statement (PostgreSQL)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a SQLite file)")
    parser.add_argument("--workflows", type=int, default=1500)
    args = parser.parse_args()
    url = args.db or database_url("sqlite", "phases")
    instrument()
    engine = make_engine(url)
    create_schema(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM workflow_step_history"))
        connection.execute(sa.text("DELETE FROM workflow_history"))
    provider = TracerProvider()
    processor = WorkflowHistorySpanProcessor(engine)
    provider.add_span_processor(processor)
    assert processor.force_flush(30_000)
    CPU.clear()  # the schema's preparation is not the writer's work per row
    before = thread_cpu()
    for _ in range(args.workflows):
        with provision_run(provider, "phases") as run_scope:
            for name in STEPS:
                with run_scope.step(name):
                    pass
    assert processor.force_flush(600_000), processor.stats
    after = thread_cpu()
    for name, seconds in after.items():
        if name.startswith("flowtel"):
            CPU[f"thread {name} (all of it)"] = seconds - before.get(name, 0.0)
    processor.shutdown()
    engine.dispose()
    steps = args.workflows * len(STEPS)
    print(f"{engine.dialect.name}: {args.workflows} workflows, CPU per committed step")
    for label, seconds in sorted(CPU.items()):
        print(f"  {label:<45} {seconds / steps * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
