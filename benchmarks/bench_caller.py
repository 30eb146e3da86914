"""Comparison 1: what a step costs the workflow's own thread.

Three loops of the same shape, interleaved round by round in one process:

- **flowtel step**: ``with run.step(name): pass`` inside ``workflow_run``, on a provider
  carrying the history processor (writing to a SQLite WAL file) and an OTLP
  ``BatchSpanProcessor`` with a no-op exporter, as ``configure()`` sets it up;
- **bare span**: ``with tracer.start_as_current_span(name): pass`` under a root span, on a
  provider with no processor;
- **bare span, exported**: the same bare spans on a provider with only the SDK's
  ``BatchSpanProcessor`` (no-op exporter): what exporting spans costs any SDK user, flowtel or
  not — it keeps each span alive until its batch is exported, which makes the garbage
  collector's passes over the whole heap far more frequent;
- **function call**: a call to an empty function.

The three span loops run a second time after ``gc.freeze()`` (what pre-fork servers do after
start-up: the objects alive at that point leave the collector's generations, so its full
passes stop walking every imported module), then ``gc.unfreeze()``: the tuning docs/operations.md
recommends for long-running workers, measured.

Only the 23-step inner loop is timed (the run's own start and end are reported separately, per
workflow). Two clocks: the caller thread's CPU time (``time.thread_time``: the work done on
the caller's thread) and wall time, which also includes the moments the caller waited for the
GIL while flowtel's writer thread, in the same process, turned earlier spans into rows. Each
flowtel round ends with ``force_flush`` outside the timing, so no round inherits another's
backlog.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from opentelemetry.sdk.trace.export import BatchSpanProcessor

from benchmarks.common import (
    STEPS,
    NullExporter,
    bare_provider,
    database_url,
    flowtel_provider,
    interleave,
    median,
    provision_run,
    ratio_summary,
)

GOAL = 1.3


def _noop() -> None:
    pass


def _per_step(totals: dict[str, float], runs: int) -> dict[str, float]:
    steps = runs * len(STEPS)
    return {
        "step_wall_us": totals["step_wall"] / steps * 1e6,
        "step_cpu_us": totals["step_cpu"] / steps * 1e6,
        "workflow_wall_us": totals["wall"] / runs * 1e6,
        "workflow_cpu_us": totals["cpu"] / runs * 1e6,
    }


def call_round(runs: int) -> dict[str, float]:
    """The loop with an empty function call per step."""
    perf, cpu = time.perf_counter, time.thread_time
    totals = dict.fromkeys(("step_wall", "step_cpu", "wall", "cpu"), 0.0)
    w0, c0 = perf(), cpu()
    for _ in range(runs):
        _noop()
        w, c = perf(), cpu()
        for _name in STEPS:
            _noop()
        totals["step_wall"] += perf() - w
        totals["step_cpu"] += cpu() - c
    totals["wall"], totals["cpu"] = perf() - w0, cpu() - c0
    return _per_step(totals, runs)


def bare_round(tracer: Any, runs: int) -> dict[str, float]:
    """The loop with a bare SDK span per step, under a bare root span."""
    perf, cpu = time.perf_counter, time.thread_time
    totals = dict.fromkeys(("step_wall", "step_cpu", "wall", "cpu"), 0.0)
    w0, c0 = perf(), cpu()
    for _ in range(runs):
        with tracer.start_as_current_span("provision_server"):
            w, c = perf(), cpu()
            for name in STEPS:
                with tracer.start_as_current_span(name):
                    pass
            totals["step_wall"] += perf() - w
            totals["step_cpu"] += cpu() - c
    totals["wall"], totals["cpu"] = perf() - w0, cpu() - c0
    return _per_step(totals, runs)


def flowtel_round(provider: Any, processor: Any, runs: int) -> dict[str, float]:
    """The loop with flowtel steps inside a flowtel run; flushed after the timing."""
    perf, cpu = time.perf_counter, time.thread_time
    totals = dict.fromkeys(("step_wall", "step_cpu", "wall", "cpu"), 0.0)
    w0, c0 = perf(), cpu()
    for _ in range(runs):
        with provision_run(provider) as run:
            w, c = perf(), cpu()
            for name in STEPS:
                with run.step(name):
                    pass
            totals["step_wall"] += perf() - w
            totals["step_cpu"] += cpu() - c
    totals["wall"], totals["cpu"] = perf() - w0, cpu() - c0
    assert processor.force_flush(120_000), processor.stats
    return _per_step(totals, runs)


def run(
    *, quick: bool = False, rounds: int | None = None, runs: int | None = None
) -> dict[str, Any]:
    """Measure comparison 1 and return its figures."""
    rounds = rounds or (3 if quick else 11)
    runs = runs or (40 if quick else 300)
    tracer = bare_provider().get_tracer("bench")
    exported = bare_provider()
    exported.add_span_processor(BatchSpanProcessor(NullExporter()))
    exported_tracer = exported.get_tracer("bench")
    provider, processor = flowtel_provider(database_url("sqlite", "caller"))
    # warm-up: caches, code paths, the writer's first batch
    bare_round(tracer, 20)
    bare_round(exported_tracer, 20)
    flowtel_round(provider, processor, 20)
    loops = {
        "bare_span": lambda: bare_round(tracer, runs),
        "bare_span_exported": lambda: bare_round(exported_tracer, runs),
        "flowtel_step": lambda: flowtel_round(provider, processor, runs),
    }
    results = interleave(rounds, {"call": lambda: call_round(runs), **loops})
    gc.collect()
    gc.freeze()
    try:
        frozen = interleave(rounds, loops)
    finally:
        gc.unfreeze()
    for name, rows in frozen.items():
        results[f"{name}_gc_frozen"] = rows
    exported.shutdown()
    processor.shutdown()

    def column(name: str, key: str) -> list[float]:
        return [r[key] for r in results[name]]

    figures: dict[str, Any] = {}
    for name in results:
        figures[name] = {key: median(column(name, key)) for key in results[name][0]}
    cpu_ratio = ratio_summary(
        column("flowtel_step", "step_cpu_us"), column("bare_span", "step_cpu_us")
    )
    wall_ratio = ratio_summary(
        column("flowtel_step", "step_wall_us"), column("bare_span", "step_wall_us")
    )
    workflow_ratio = ratio_summary(
        column("flowtel_step", "workflow_wall_us"), column("bare_span", "workflow_wall_us")
    )
    workflow_cpu_ratio = ratio_summary(
        column("flowtel_step", "workflow_cpu_us"), column("bare_span", "workflow_cpu_us")
    )
    vs_call = ratio_summary(column("flowtel_step", "step_cpu_us"), column("call", "step_cpu_us"))
    vs_exported = ratio_summary(
        column("flowtel_step", "step_cpu_us"), column("bare_span_exported", "step_cpu_us")
    )
    exported_vs_bare = ratio_summary(
        column("bare_span_exported", "step_cpu_us"), column("bare_span", "step_cpu_us")
    )
    frozen_ratio = ratio_summary(
        column("flowtel_step_gc_frozen", "step_cpu_us"),
        column("bare_span_gc_frozen", "step_cpu_us"),
    )
    return {
        "title": "caller cost per step",
        "goal": f"flowtel step < {GOAL}x a bare SDK span (caller thread)",
        "target": GOAL,
        "ratio": cpu_ratio["median"],
        "met": cpu_ratio["median"] < GOAL,
        "rounds": rounds,
        "workflows_per_round": runs,
        "per_step_us": figures,
        "ratios": {
            "step_cpu_vs_bare_span": cpu_ratio,
            "step_wall_vs_bare_span": wall_ratio,
            "workflow_wall_vs_bare_spans": workflow_ratio,
            "workflow_cpu_vs_bare_spans": workflow_cpu_ratio,
            "step_cpu_vs_function_call": vs_call,
            "step_cpu_vs_exported_bare_span": vs_exported,
            "exported_bare_span_vs_bare_span": exported_vs_bare,
            "step_cpu_vs_bare_span_gc_frozen": frozen_ratio,
        },
    }
