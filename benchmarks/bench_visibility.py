"""Comparison 4: from a workflow's start to its ``running`` row being readable elsewhere.

A probe thread starts a workflow every few milliseconds, notes the wall-clock time just before
``workflow_run`` enters, and keeps the run open until it has been seen. A separate *process*
(another connection, as a dashboard would be) polls the history table every 2 ms for the
probes' run ids and reports when each first appears; the latency is the difference of the two
wall clocks (one machine, one clock). Two phases in the same process: **idle** (probes only)
as the baseline, and **under load**, with another thread producing 23-step workflows at
half the rate flowtel sustained end to end on that database just before (``LOAD_FRACTION``).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from typing import Any

import sqlalchemy as sa

from benchmarks.common import (
    database_url,
    flowtel_provider,
    median,
    percentile,
    run_flowtel_workflows,
    wait_committed,
)
from instrumentation import workflow_run

GOAL_P99_S = 0.5
POLL_S = 0.002
TIMEOUT_S = 5.0
"""A probe not seen within this long counts as this long."""
LOAD_FRACTION = 0.5
"""The background load, as a fraction of the throughput flowtel sustains on that database
(measured first, in the same process): a load above what the writer can commit would make any
latency grow without bound, which comparison 2's "committed at loop end" already shows."""


def _reader(url: str, requests: Any, replies: Any) -> None:
    """In another process: poll for the run ids received, reply (run_id, seen_at)."""
    engine = sa.create_engine(url)
    pending: set[str] = set()
    done = False
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT count(*) FROM workflow_history")).scalar()
        connection.rollback()
        replies.put(("", time.time()))  # ready: connected, tables visible
        while not done or pending:
            try:
                while True:
                    item = requests.get_nowait()
                    if item is None:
                        done = True
                    else:
                        pending.add(item)
            except queue.Empty:
                pass
            if pending:
                found = connection.execute(
                    sa.text("SELECT run_id FROM workflow_history WHERE run_id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": sorted(pending)},
                ).scalars()
                seen_at = time.time()
                for run_id in found:
                    pending.discard(run_id)
                    replies.put((run_id, seen_at))
                connection.rollback()  # a fresh snapshot for the next poll
            elif done:
                break
            time.sleep(POLL_S)
    engine.dispose()


def _probe(
    provider: Any, probes: int, spacing: float, requests: Any, replies: Any, max_s: float
) -> list[float]:
    latencies: list[float] = []
    give_up = time.monotonic() + max_s
    for n in range(probes):
        if time.monotonic() > give_up and latencies:
            break  # a phase whose probes time out must not take forever
        started = time.time()
        with workflow_run(
            "visibility_probe",
            workflow_id=f"probe-{n}",
            total_steps=1,
            tracer_provider=provider,
        ) as run:
            requests.put(run.run_id)
            seen_at = None
            deadline = time.monotonic() + TIMEOUT_S
            while seen_at is None and time.monotonic() < deadline:
                try:
                    run_id, when = replies.get(timeout=max(0.001, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if run_id == run.run_id:  # else a late reply for a probe that timed out
                    seen_at = when
            latencies.append(TIMEOUT_S if seen_at is None else seen_at - started)
            with run.step("probe"):
                pass
        time.sleep(spacing)
    return latencies


def processor_queue(provider: Any) -> int | None:
    """The history processor's queue depth (None when it does not say)."""
    for processor in getattr(provider._active_span_processor, "_span_processors", ()):
        stats = getattr(processor, "stats", None)
        if isinstance(stats, dict):
            return stats.get("queue_depth")
    return None


def sustained_rate(url: str, provider: Any, processor: Any, workflows: int) -> float:
    """Workflows per second flowtel commits end to end here, right now."""
    reader = sa.create_engine(url, poolclass=sa.NullPool)
    query = sa.text(
        "SELECT count(*) FROM workflow_history "
        "WHERE status = 'completed' AND workflow_id LIKE 'provision_calibrate-%'"
    )

    def committed() -> int:
        with reader.connect() as connection:
            return int(connection.execute(query).scalar_one())

    started = time.perf_counter()
    run_flowtel_workflows(provider, workflows, prefix="calibrate")
    done = wait_committed(processor, committed, workflows)
    reader.dispose()
    return workflows / (done["at"] - started)


def _phase(
    url: str, provider: Any, probes: int, rate: float | None, max_s: float
) -> dict[str, Any]:
    load = rate is not None
    context = mp.get_context("spawn")
    requests, replies = context.Queue(), context.Queue()
    reader = context.Process(target=_reader, args=(url, requests, replies), daemon=True)
    reader.start()
    replies.get(timeout=120)  # the reader is connected (spawning it takes a while)
    stop = threading.Event()
    produced = [0]

    def produce() -> None:  # paced at *rate*, flat out if it cannot keep up
        begun = time.perf_counter()
        while not stop.is_set():
            run_flowtel_workflows(provider, 5, prefix="load")
            produced[0] += 5
            ahead = begun + produced[0] / (rate or 1.0) - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)

    loader = threading.Thread(target=produce, daemon=True)
    if load:
        loader.start()
    started = time.perf_counter()
    try:
        latencies = _probe(provider, probes, 0.005, requests, replies, max_s)
    finally:
        stop.set()
        requests.put(None)
        if load:
            loader.join()
        reader.join(30)
    elapsed = time.perf_counter() - started
    return {
        "probes": len(latencies),
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "max_s": max(latencies),
        "timed_out": sum(1 for value in latencies if value >= TIMEOUT_S),
        "queue_depth_after": processor_queue(provider),
        "load_wf_per_s": produced[0] / elapsed,
    }


def run(backends: list[str], *, quick: bool = False) -> dict[str, Any]:
    """Measure comparison 4 on every backend in *backends*."""
    probes = 20 if quick else 200
    per_database = {}
    for backend in backends:
        url = database_url(backend, "visibility")
        provider, processor = flowtel_provider(url)
        rate = sustained_rate(url, provider, processor, 100 if quick else 1000)
        max_s = 15.0 if quick else 60.0
        idle = _phase(url, provider, max(10, probes // 4), None, max_s)
        loaded = _phase(url, provider, probes, rate * LOAD_FRACTION, max_s)
        processor.shutdown()
        per_database[backend] = {
            "database": backend,
            "sustained_wf_per_s": rate,
            "idle": idle,
            "under_load": loaded,
            "p99_ratio_load_vs_idle": loaded["p99_s"] / idle["p99_s"] if idle["p99_s"] else None,
            "flush_interval_s": getattr(processor, "_flush_interval", None),
        }
    worst = max(row["under_load"]["p99_s"] for row in per_database.values())
    return {
        "title": "time to visibility",
        "goal": f"p99 under load < {GOAL_P99_S} s",
        "target": GOAL_P99_S,
        "ratio": worst / GOAL_P99_S,
        "met": worst < GOAL_P99_S,
        "worst_p99_s": worst,
        "databases": per_database,
        "median_p50_s": median(row["under_load"]["p50_s"] for row in per_database.values()),
    }
