"""Comparison 6: several worker processes writing to one database vs one process.

Each worker is a fresh interpreter (``spawn``) with its own tracer provider, history processor
and writer thread, producing N 23-step workflows as fast as it can and then flushing. All
workers wait on one barrier before starting; the figure is every worker's committed workflows
divided by the span from the first start to the last flush. Rounds alternate one worker and
four workers, on the same database.

On a machine with C cores this is bounded by C, not by 4: a flowtel process already keeps more
than one core busy (its caller thread, its writer thread between GIL hand-offs, and the
database server's backend process working on its upserts), so with 2 cores four processes can
at best share the same 2 cores. The JSON records the cores so the figure can be read that way.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import sqlalchemy as sa

from benchmarks.common import (
    STEPS,
    database_url,
    flowtel_provider,
    interleave,
    median,
    ratio_summary,
    reset_tables,
    run_flowtel_workflows,
    wait_committed,
)

GOAL = 3.0


def _worker(url: str, runs: int, barrier: Any, results: Any, prefix: str) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from benchmarks.common import NullExporter, spool_options
    from exporters import WorkflowHistorySpanProcessor, make_engine

    provider = TracerProvider(shutdown_on_exit=False)
    processor = WorkflowHistorySpanProcessor(
        make_engine(url), create_tables=False, **spool_options()
    )
    provider.add_span_processor(processor)
    provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    run_flowtel_workflows(provider, 5, prefix=f"{prefix}w")  # warm-up: imports, connection
    processor.force_flush(60_000)
    reader = sa.create_engine(url, poolclass=sa.NullPool)
    mine = sa.text(
        "SELECT count(*) FROM workflow_history WHERE status = 'completed' AND workflow_id LIKE :p"
    ).bindparams(p=f"provision_{prefix}-%")

    def committed() -> int:
        with reader.connect() as connection:
            return int(connection.execute(mine).scalar_one())

    barrier.wait()
    started = time.time()
    run_flowtel_workflows(provider, runs, prefix=prefix)
    done = wait_committed(processor, committed, runs)
    finished = time.time() - (time.perf_counter() - done["at"])
    processor.shutdown()
    reader.dispose()
    results.put((started, finished, committed() == runs))


def workers_round(url: str, processes: int, runs: int, serial: list[int]) -> float:
    """Committed workflows per second of *processes* workers, *runs* workflows each."""
    engine = sa.create_engine(url)
    reset_tables(engine)
    context = mp.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    serial[0] += 1
    workers = [
        context.Process(
            target=_worker, args=(url, runs, barrier, results, f"r{serial[0]}p{n}"), daemon=True
        )
        for n in range(processes)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=900) for _ in workers]
    for worker in workers:
        worker.join(60)
    assert all(ok for _, _, ok in outcomes), outcomes
    with engine.connect() as connection:
        steps = connection.execute(sa.text("SELECT count(*) FROM workflow_step_history"))
        assert steps.scalar_one() == processes * (runs + 5) * len(STEPS)
    engine.dispose()
    span = max(f for _, f, _ in outcomes) - min(s for s, _, _ in outcomes)
    return processes * runs / span


def run(
    backends: list[str], *, quick: bool = False, rounds: int | None = None, processes: int = 4
) -> dict[str, Any]:
    """Measure comparison 6 on PostgreSQL (or, without it, the first backend given)."""
    backend = "postgresql" if "postgresql" in backends else backends[0]
    rounds = rounds or (1 if quick else 3)
    runs = 30 if quick else 1000
    url = database_url(backend, "workers")
    _, processor = flowtel_provider(url)  # creates the tables
    processor.shutdown()
    serial = [0]
    results = interleave(
        rounds,
        {
            "one": lambda: workers_round(url, 1, runs, serial),
            "many": lambda: workers_round(url, processes, runs, serial),
        },
    )
    ratio = ratio_summary(results["many"], results["one"])
    cores = os.cpu_count() or 1
    return {
        "title": "many workers",
        "goal": f"{processes} processes >= {GOAL}x one process",
        "target": GOAL,
        "ratio": ratio["median"],
        "met": ratio["median"] >= GOAL,
        "database": backend,
        "processes": processes,
        "cores": cores,
        "workflows_per_process": runs,
        "one_process_wf_per_s": median(results["one"]),
        "many_processes_wf_per_s": median(results["many"]),
        "scaling": ratio,
        "ceiling_note": (
            f"{cores} cores: {processes} CPU-bound processes cannot exceed about {cores}x "
            "one process's CPU, less what the database server itself needs"
        ),
    }
