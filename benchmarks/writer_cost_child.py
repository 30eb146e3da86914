"""One measurement of the writer's cost, in a fresh interpreter, for :mod:`bench_writer_cost`.

``python benchmarks/writer_cost_child.py --db URL --workflows N`` with ``PYTHONPATH`` set to the
tree under test. It uses only flowtel's public API of every version since the issue that asked
for the measurement (``WorkflowHistorySpanProcessor``, ``make_engine``, ``create_schema``,
``workflow_run``), so the same file measures an older commit and today's tree: N 23-step
workflows on a provider with only the history processor, timed until ``force_flush`` answers
that every row is committed. The background threads' CPU (the process's CPU time minus the
main thread's) is the writer's cost: nothing else runs in the background; each thread's share
(by name, taken as it ends after ``shutdown``) is printed too. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

STEPS = 23
THREAD_CPU: dict[str, float] = {}
"""CPU seconds of each background thread, by name, taken as it ends."""


def _record_thread_cpu() -> None:
    """Make every thread started from now on note its CPU time when it ends."""
    run = threading.Thread.run

    def timed(self: threading.Thread) -> None:
        try:
            run(self)
        finally:
            THREAD_CPU[self.name] = THREAD_CPU.get(self.name, 0.0) + time.thread_time()

    threading.Thread.run = timed  # type: ignore[method-assign]


def measure(url: str, workflows: int) -> dict[str, float | int | str]:
    """Record *workflows* runs; return the caller's and the writer's CPU and the rate."""
    import exporters
    from exporters import WorkflowHistorySpanProcessor, create_schema, make_engine
    from instrumentation import workflow_run

    _record_thread_cpu()
    engine = make_engine(url)
    create_schema(engine)
    with engine.begin() as connection:  # a server database is reused between rounds
        connection.execute(sa.text("DELETE FROM workflow_step_history"))
        connection.execute(sa.text("DELETE FROM workflow_history"))
    provider = TracerProvider()
    processor = WorkflowHistorySpanProcessor(engine)
    provider.add_span_processor(processor)
    names = [f"step_{index:02d}" for index in range(STEPS)]

    process_cpu, main_cpu, wall = time.process_time(), time.thread_time(), time.perf_counter()
    for n in range(workflows):
        with workflow_run(
            "provision_server",
            workflow_id=f"provision_srv-{n}",
            context={"server_id": f"srv-{n}", "device_type": "a1_c5_large"},
            total_steps=STEPS,
            tracer_provider=provider,
        ) as run:
            for name in names:
                with run.step(name):
                    pass
    caller_cpu = time.thread_time() - main_cpu
    committed = processor.force_flush(600_000)
    wall = time.perf_counter() - wall
    background_cpu = time.process_time() - process_cpu - (time.thread_time() - main_cpu)
    with engine.connect() as connection:
        steps = connection.execute(sa.text("SELECT count(*) FROM workflow_step_history")).scalar()
        runs = connection.execute(sa.text("SELECT count(*) FROM workflow_history")).scalar()
    processor.shutdown()
    engine.dispose()
    if not committed or runs != workflows or steps != workflows * STEPS:
        raise SystemExit(f"not every row committed: {runs} runs, {steps} steps")
    return {
        "tree": exporters.__file__,
        "workflows_per_s": workflows / wall,
        "writer_cpu_us_per_step": background_cpu / steps * 1e6,
        "caller_cpu_us_per_step": caller_cpu / steps * 1e6,
        "steps": int(steps),
        "threads_us_per_step": {
            name: round(cpu / steps * 1e6, 2) for name, cpu in sorted(THREAD_CPU.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--workflows", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(measure(args.db, args.workflows)))


if __name__ == "__main__":
    main()
