"""End-to-end throughput: N 23-step workflows recorded by flowtel vs bare spans, same process.

Run: ``python benchmarks/bench_throughput.py [--runs N] [--db URL] [--json out.json]``.

The baseline is the same loop with ``tracer.start_as_current_span`` on a tracer provider with
no processor. flowtel's figure counts until every run and step row is committed
(``force_flush``). It also reports how many runs were already committed, by another
connection, the moment the producing loop ended: the writer must keep pace, not catch up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporters import WorkflowHistorySpanProcessor, make_engine  # noqa: E402
from exporters.schema import metadata  # noqa: E402
from instrumentation import workflow_run  # noqa: E402

STEPS = [f"step_{n:02d}" for n in range(1, 24)]


def bare_loop(runs: int) -> float:
    """Seconds for *runs* workflows of bare SDK spans (no processor)."""
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("bench")
    started = time.perf_counter()
    for _ in range(runs):
        with tracer.start_as_current_span("provision_server"):
            for name in STEPS:
                with tracer.start_as_current_span(name):
                    pass
    return time.perf_counter() - started


def flowtel_loop(runs: int, url: str) -> dict[str, Any]:
    """Seconds for *runs* workflows through flowtel until all rows are committed."""
    engine = make_engine(url)
    metadata.drop_all(engine)
    provider = TracerProvider(shutdown_on_exit=False)
    processor = WorkflowHistorySpanProcessor(engine)
    provider.add_span_processor(processor)
    processor.force_flush(10_000)  # tables created, writer idle
    started = time.perf_counter()
    for n in range(runs):
        with workflow_run(
            "provision_server",
            workflow_id=f"provision_srv-{n}",
            context={"server_id": f"srv-{n}", "device_type": "a1_c5_large"},
            total_steps=len(STEPS),
            tracer_provider=provider,
        ) as run:
            for name in STEPS:
                with run.step(name):
                    pass
    loop_done = time.perf_counter()
    reader = sa.create_engine(url)
    with reader.connect() as connection:
        committed_at_loop_end = connection.execute(
            sa.text("SELECT count(*) FROM workflow_history WHERE status = 'completed'")
        ).scalar_one()
    reader.dispose()
    assert processor.force_flush(600_000), processor.stats
    finished = time.perf_counter()
    with engine.connect() as connection:
        steps = connection.execute(sa.text("SELECT count(*) FROM workflow_step_history")).scalar()
    assert steps == runs * len(STEPS), steps
    stats = processor.stats
    processor.shutdown()
    return {
        "loop_s": loop_done - started,
        "total_s": finished - started,
        "committed_at_loop_end": committed_at_loop_end,
        "batches": stats["batches_written"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--db", action="append", help="database URL (repeatable)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    urls = args.db or [f"sqlite:///{tempfile.mkdtemp()}/bench.db"]
    results = []
    bare_loop(200)  # warm-up
    for url in urls:
        bare = bare_loop(args.runs)
        measured = flowtel_loop(args.runs, url)
        row = {
            "database": sa.make_url(url).get_backend_name(),
            "runs": args.runs,
            "bare_wf_per_s": args.runs / bare,
            "flowtel_wf_per_s": args.runs / measured["total_s"],
            "ratio_vs_bare": measured["total_s"] / bare,
            "caller_ratio_vs_bare": measured["loop_s"] / bare,
            "committed_at_loop_end": measured["committed_at_loop_end"],
            "batches": measured["batches"],
        }
        results.append(row)
        print(
            f"{row['database']:<10} runs={args.runs} bare={row['bare_wf_per_s']:.0f} wf/s "
            f"flowtel={row['flowtel_wf_per_s']:.0f} wf/s ratio={row['ratio_vs_bare']:.2f} "
            f"(caller {row['caller_ratio_vs_bare']:.2f}) committed at loop end="
            f"{row['committed_at_loop_end']}/{args.runs} batches={row['batches']}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
