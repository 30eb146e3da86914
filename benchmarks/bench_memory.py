"""Comparison 5: resident memory per 1,000 runs in flight, and during a database outage.

Every measurement runs in a fresh interpreter (``python -m benchmarks.bench_memory --child
...``) so that one measurement's heap does not carry into the next; subjects alternate.

- **Runs in flight**: asyncio tasks each open a run, finish three steps and wait; RSS is read
  (after ``force_flush``, so the writer has folded and written them) as the number of open
  runs climbs. The slope, MiB per 1,000 runs in flight, is compared with the same tasks holding
  bare SDK spans on a provider without processors.
- **Outage**: the history database is unreachable (a PostgreSQL URL on a closed port) while
  workflows produce 100,000 events; RSS is sampled every tenth of the way. "Flat" means the
  second half of the outage adds (almost) nothing: memory is bounded by the queue and the
  writer's limits, not by the outage's length. The baseline is the same workload on a healthy
  SQLite database. When the processor accepts a spool directory (``spool_dir``/``spool_path``
  parameter, or ``FLOWTEL_SPOOL_DIR``), the child passes a temporary one, so the benchmark
  measures the spool once it exists.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (
    ROOT,
    SPANS_PER_WORKFLOW,
    bare_provider,
    database_url,
    median,
    rss_bytes,
    run_flowtel_workflows,
    scratch_dir,
)

MIB = 1024 * 1024
OUTAGE_URL = "postgresql+psycopg://flowtel:unused@127.0.0.1:9/flowtel_bench_outage"
"""Nothing listens on port 9 (discard): every connection attempt is refused at once."""


def _processor_options(spool_dir: str) -> dict[str, Any]:
    from exporters import WorkflowHistorySpanProcessor

    parameters = inspect.signature(WorkflowHistorySpanProcessor.__init__).parameters
    for name in ("spool_dir", "spool_path", "spool_directory"):
        if name in parameters:
            return {name: spool_dir}
    return {}


def _history_provider(url: str, spool_dir: str) -> tuple[Any, Any]:
    from opentelemetry.sdk.trace import TracerProvider

    from exporters import WorkflowHistorySpanProcessor, make_engine

    engine = make_engine(url)
    provider = TracerProvider(shutdown_on_exit=False)
    processor = WorkflowHistorySpanProcessor(engine, **_processor_options(spool_dir))
    provider.add_span_processor(processor)
    return provider, processor


# -- children ------------------------------------------------------------------------------
async def _open_run(provider: Any, bare: bool, n: int, ready: list[int], release: Any) -> None:
    """One run in flight: started, three steps done, waiting for *release*."""
    from instrumentation import workflow_run

    if bare:
        tracer = provider.get_tracer("bench")
        with tracer.start_as_current_span("provision_server"):
            for index in range(3):
                with tracer.start_as_current_span(f"step_{index}"):
                    pass
            ready[0] += 1
            await release.wait()
        return
    async with workflow_run(
        "provision_server",
        workflow_id=f"provision_srv-{n}",
        context={"server_id": f"srv-{n}", "device_type": "a1_c5_large"},
        total_steps=23,
        tracer_provider=provider,
    ) as run:
        for index in range(3):
            async with run.step(f"step_{index}"):
                pass
        ready[0] += 1
        await release.wait()


def child_in_flight(subject: str, levels: list[int]) -> dict[str, Any]:
    """RSS at each number of runs in flight (cumulative)."""
    bare = subject == "bare"
    if bare:
        provider, processor = bare_provider(), None
    else:
        spool = tempfile.mkdtemp(prefix="spool-", dir=scratch_dir())
        provider, processor = _history_provider(database_url("sqlite", "memory"), spool)
    samples: list[tuple[int, int]] = []

    async def main() -> None:
        release = asyncio.Event()
        ready = [0]
        tasks = [
            asyncio.create_task(_open_run(provider, bare, -n, ready, release)) for n in range(1, 51)
        ]
        while ready[0] < 50:  # warm-up: code paths, the writer's first batch
            await asyncio.sleep(0.001)
        if processor is not None:
            assert processor.force_flush(60_000), processor.stats
        gc.collect()
        samples.append((0, rss_bytes()))
        for level in levels:
            for n in range(len(tasks) - 50, level):
                tasks.append(asyncio.create_task(_open_run(provider, bare, n, ready, release)))
            while ready[0] < level + 50:
                await asyncio.sleep(0.001)
            if processor is not None:
                assert processor.force_flush(60_000), processor.stats
            gc.collect()
            samples.append((level, rss_bytes()))
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    if processor is not None:
        processor.shutdown()
    return {"samples": samples}


def child_outage(subject: str, events: int) -> dict[str, Any]:
    """RSS every tenth of the way through *events* events, database down or healthy."""
    import logging

    logging.disable(logging.CRITICAL)  # the outage is logged once; keep the output clean
    spool = tempfile.mkdtemp(prefix="spool-", dir=scratch_dir())
    os.environ.setdefault("FLOWTEL_SPOOL_DIR", spool)
    url = OUTAGE_URL if subject == "outage" else database_url("sqlite", "memory")
    provider, processor = _history_provider(url, spool)
    run_flowtel_workflows(provider, 20)  # warm-up
    processor.force_flush(2_000)
    gc.collect()
    workflows = max(10, events // (2 * SPANS_PER_WORKFLOW))
    samples = [(0, rss_bytes())]
    done = 0
    for tenth in range(1, 11):
        target = workflows * tenth // 10
        run_flowtel_workflows(provider, target - done)
        done = target
        time.sleep(0.05)  # let the writer fold what was queued
        gc.collect()
        samples.append((done * 2 * SPANS_PER_WORKFLOW, rss_bytes()))
    stats = dict(processor.stats)
    processor.shutdown(timeout_millis=1_000)
    return {"samples": samples, "stats": stats, "spool_options": _processor_options(spool)}


# -- parent --------------------------------------------------------------------------------
def _child(*args: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--child", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"memory child {args} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _slope_per_1000(samples: list[list[int]]) -> float:
    (first_n, first_rss), (last_n, last_rss) = samples[0], samples[-1]
    return (last_rss - first_rss) / MIB / ((last_n - first_n) / 1000)


def run(*, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Measure comparison 5."""
    rounds = rounds or (1 if quick else 3)
    levels = [250, 500] if quick else [1000, 2000, 4000]
    events = 10_000 if quick else 100_000
    in_flight: dict[str, list[float]] = {"bare": [], "flowtel": []}
    outage: dict[str, list[dict[str, Any]]] = {"healthy": [], "outage": []}
    for round_number in range(rounds):
        order = ["bare", "flowtel"] if round_number % 2 == 0 else ["flowtel", "bare"]
        for subject in order:
            result = _child("in_flight", subject, json.dumps(levels))
            in_flight[subject].append(_slope_per_1000(result["samples"]))
        order = ["healthy", "outage"] if round_number % 2 == 0 else ["outage", "healthy"]
        for subject in order:
            outage[subject].append(_child("outage", subject, str(events)))

    def growth(result: dict[str, Any]) -> dict[str, float]:
        samples = result["samples"]
        start, middle, end = samples[0][1], samples[len(samples) // 2][1], samples[-1][1]
        return {"first_half_mib": (middle - start) / MIB, "second_half_mib": (end - middle) / MIB}

    outage_growth = [growth(r) for r in outage["outage"]]
    healthy_growth = [growth(r) for r in outage["healthy"]]
    second_half = median(g["second_half_mib"] for g in outage_growth)
    first_half = median(g["first_half_mib"] for g in outage_growth)
    flowtel_slope = median(in_flight["flowtel"])
    bare_slope = median(in_flight["bare"])
    flat = second_half <= max(2.0, 0.25 * first_half)
    return {
        "title": "memory",
        "goal": "flat: bounded by the queue, not by the outage",
        "target": None,
        "ratio": flowtel_slope / bare_slope if bare_slope > 0 else None,
        "met": flat,
        "in_flight": {
            "levels": levels,
            "flowtel_mib_per_1000_runs": flowtel_slope,
            "bare_span_mib_per_1000_runs": bare_slope,
            "rounds": rounds,
        },
        "outage": {
            "events": events,
            "outage_first_half_mib": first_half,
            "outage_second_half_mib": second_half,
            "outage_total_mib": first_half + second_half,
            "healthy_total_mib": median(
                g["first_half_mib"] + g["second_half_mib"] for g in healthy_growth
            ),
            "flat": flat,
            "samples": outage["outage"][-1]["samples"],
            "processor_stats": outage["outage"][-1]["stats"],
            "spool_options": outage["outage"][-1]["spool_options"],
        },
    }


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs="+", required=True)
    args = parser.parse_args()
    kind, subject, value = args.child
    if kind == "in_flight":
        result = child_in_flight(subject, json.loads(value))
    else:
        result = child_outage(subject, int(value))
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
