"""Comparison 2: end-to-end throughput of 23-step workflows, until every row is committed.

Per database, four subjects interleaved round by round in one process:

- **flowtel**: N workflows through ``workflow_run``/``run.step`` on a provider with the history
  processor and an OTLP ``BatchSpanProcessor`` (no-op exporter), timed until ``force_flush``
  says every run and step row is committed (then checked by counting them);
- **flowtel with metrics**: the same with flowtel's metrics processor too, recording into an
  SDK meter provider with an in-memory reader — what ``configure()`` sets up when OTLP is on;
- **bare spans**: the same loop with ``tracer.start_as_current_span`` and no processor;
- **the old way**: the same workflows recorded as the old system did (see
  :mod:`benchmarks.oldway`): an INSERT, an UPDATE with the metadata JSON after each step and a
  final UPDATE, each committed on the workflow's thread (SQLite in its default journal mode).

It also reports how many of a round's runs were already committed — counted by another
connection the moment the producing loop ended — since the writer must keep pace rather than
catch up at the end.

Standalone: ``python benchmarks/bench_throughput.py [--runs N] [--db URL ...] [--json FILE]``;
the suite (``python -m benchmarks``) runs it on every configured database.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlalchemy as sa
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from benchmarks.common import (
    SPANS_PER_WORKFLOW,
    STEPS,
    bare_provider,
    database_url,
    flowtel_provider,
    interleave,
    median,
    ratio_summary,
    reset_tables,
    run_bare_workflows,
    run_flowtel_workflows,
    wait_committed,
)
from benchmarks.oldway import OldWayRecorder, old_engine
from exporters.telemetry.metrics import WorkflowMetricsSpanProcessor

GOAL_WF_PER_S = 1000
GOAL_VS_OLD = 20.0
GOAL_VS_BARE = 1.3


def bare_round(tracer: Any, runs: int) -> float:
    """Seconds per workflow of bare spans."""
    started = time.perf_counter()
    run_bare_workflows(tracer, runs)
    return (time.perf_counter() - started) / runs


def _count(reader: sa.Engine, completed_only: bool) -> tuple[int, int]:
    with reader.connect() as connection:
        where = " WHERE status = 'completed'" if completed_only else ""
        runs = connection.execute(sa.text(f"SELECT count(*) FROM workflow_history{where}"))
        steps = connection.execute(sa.text("SELECT count(*) FROM workflow_step_history"))
        return int(runs.scalar_one()), int(steps.scalar_one())


def flowtel_round(provider: Any, processor: Any, reader: sa.Engine, runs: int) -> dict[str, Any]:
    """One timed round of flowtel workflows, from the first span to the last commit."""
    reset_tables(processor.engine)
    spooled_before = int(processor.stats.get("rows_spooled") or 0)
    started = time.perf_counter()
    run_flowtel_workflows(provider, runs)
    loop_done = time.perf_counter()
    committed_at_loop_end, _ = _count(reader, completed_only=True)
    expected = (runs, runs * len(STEPS))
    done = wait_committed(processor, lambda: _count(reader, completed_only=True), expected)
    assert _count(reader, completed_only=True) == expected
    return {
        "s_per_wf": (done["at"] - started) / runs,
        "loop_s_per_wf": (loop_done - started) / runs,
        "committed_at_loop_end": committed_at_loop_end / runs,
        "rows_spooled": done["rows_spooled"] - spooled_before,
    }


def old_round(recorder: OldWayRecorder, runs: int, serial: list[int]) -> float:
    """Seconds per workflow recorded the old way."""
    recorder.reset()
    started = time.perf_counter()
    for _ in range(runs):
        serial[0] += 1
        recorder.run_workflow(serial[0])
    elapsed = (time.perf_counter() - started) / runs
    assert recorder.committed_runs() == runs
    return elapsed


def measure(
    url: str, *, rounds: int, runs: int, old_runs: int, old_url: str | None = None
) -> dict[str, Any]:
    """Interleaved rounds of bare spans, flowtel and the old way on one database."""
    backend = sa.make_url(url).get_backend_name()
    tracer = bare_provider().get_tracer("bench")
    provider, processor = flowtel_provider(url)
    metered, metered_processor = flowtel_provider(url)
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    metrics_processor = WorkflowMetricsSpanProcessor(meter_provider)
    metered.add_span_processor(metrics_processor)
    reader = sa.create_engine(url)
    if old_url is None and backend == "sqlite":
        # WAL is a property of the file: the old way gets its own, in the default journal mode
        old_url = database_url("sqlite", "oldway")
    recorder = OldWayRecorder(old_engine(old_url or url)) if old_runs else None
    old_serial = [0]
    bare_round(tracer, 50)  # warm-up
    flowtel_round(provider, processor, reader, 50)
    flowtel_round(metered, metered_processor, reader, 50)
    subjects: dict[str, Any] = {
        "bare": lambda: bare_round(tracer, runs),
        "flowtel": lambda: flowtel_round(provider, processor, reader, runs),
        "flowtel_metrics": lambda: flowtel_round(metered, metered_processor, reader, runs),
    }
    if recorder is not None:
        subjects["old"] = lambda: old_round(recorder, old_runs, old_serial)
    results = interleave(rounds, subjects)
    stats = processor.stats
    processor.shutdown()
    metered_processor.shutdown()
    metrics_processor.shutdown()
    meter_provider.shutdown()
    reader.dispose()
    if recorder is not None:
        recorder.close()

    bare = results["bare"]
    total = [r["s_per_wf"] for r in results["flowtel"]]
    metered_total = [r["s_per_wf"] for r in results["flowtel_metrics"]]
    loop = [r["loop_s_per_wf"] for r in results["flowtel"]]
    vs_bare = ratio_summary(total, bare)
    row: dict[str, Any] = {
        "database": backend,
        "rounds": rounds,
        "workflows_per_round": runs,
        "bare_wf_per_s": 1 / median(bare),
        "flowtel_wf_per_s": 1 / median(total),
        "flowtel_rows_per_s": SPANS_PER_WORKFLOW / median(total),
        "flowtel_metrics_wf_per_s": 1 / median(metered_total),
        "metrics_ratio": ratio_summary(metered_total, total),
        "ratio_vs_bare": vs_bare,
        "caller_ratio_vs_bare": ratio_summary(loop, bare),
        "committed_at_loop_end": median(r["committed_at_loop_end"] for r in results["flowtel"]),
        "rows_spooled_per_round": max(r["rows_spooled"] for r in results["flowtel"]),
        "writer_batches": stats["batches_written"],
    }
    if recorder is not None:
        old = results["old"]
        row["old_workflows_per_round"] = old_runs
        row["old_wf_per_s"] = 1 / median(old)
        row["speedup_vs_old"] = ratio_summary(old, total)
    return row


def run(
    backends: list[str], *, quick: bool = False, rounds: int | None = None, runs: int | None = None
) -> dict[str, Any]:
    """Measure comparison 2 on every backend in *backends*."""
    rounds = rounds or (2 if quick else 5)
    runs = runs or (60 if quick else 2000)
    old_runs = 6 if quick else 100
    per_database = {}
    for backend in backends:
        url = database_url(backend, "throughput")
        per_database[backend] = measure(url, rounds=rounds, runs=runs, old_runs=old_runs)
    met = all(
        row["speedup_vs_old"]["median"] >= GOAL_VS_OLD
        and (row["database"] == "mysql" or row["flowtel_wf_per_s"] >= GOAL_WF_PER_S)
        for row in per_database.values()
    )
    return {
        "title": "end-to-end throughput",
        "goal": (
            f">= {GOAL_WF_PER_S} wf/s on SQLite WAL and PostgreSQL; >= {GOAL_VS_OLD:g}x the "
            f"old way; flowtel/bare-span time {GOAL_VS_BARE} (issue 2: < 1.7)"
        ),
        "target": GOAL_VS_OLD,
        "met": met,
        "databases": per_database,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="flowtel workflows per round")
    parser.add_argument("--old-runs", type=int, default=100, help="old-way workflows per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", action="append", help="database URL (repeatable)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    urls = args.db or [database_url("sqlite", "throughput")]
    results = []
    for url in urls:
        row = measure(url, rounds=args.rounds, runs=args.runs, old_runs=args.old_runs)
        results.append(row)
        old = (
            f" old={row['old_wf_per_s']:.0f} wf/s speedup={row['speedup_vs_old']['median']:.1f}x"
            if "old_wf_per_s" in row
            else ""
        )
        print(
            f"{row['database']:<10} runs={args.runs} bare={row['bare_wf_per_s']:.0f} wf/s "
            f"flowtel={row['flowtel_wf_per_s']:.0f} wf/s "
            f"ratio={row['ratio_vs_bare']['median']:.2f} "
            f"(caller {row['caller_ratio_vs_bare']['median']:.2f}){old} committed at loop end="
            f"{row['committed_at_loop_end']:.0%}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
