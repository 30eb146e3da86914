"""Workflow speed with OTLP export off, to a live collector, and to a collector that is down.

Each scenario runs in a fresh interpreter (``configure()`` installs process-wide providers):
``configure()`` with SQLite history, then ``--runs`` workflows of ``--steps`` empty steps are
timed on the caller's thread, then ``shutdown(timeout)`` is timed. Scenarios: no OTLP; the real
collector (``FLOWTEL_OTELCOL``, started here with otel-collector.yaml + the test overlay;
skipped if unset), also with ``metrics=False`` and with traces sampled at 10 % (history stays
complete: the audit sampler records every workflow span); a closed port (connection
refused); a socket that accepts and never answers (black hole). Usage::

    FLOWTEL_OTELCOL="$(bash .ci/collector.sh | tail -n 1)" \\
        python benchmarks/bench_collector_down.py --runs 2000 --steps 10 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = """
import json, time
from exporters import configure
from instrumentation import workflow_run
handle = configure(
    database_url={url!r}, service_name="bench", logs=False, metrics={metrics}, metrics_interval=3600
)
def batch(n):
    for _ in range(n):
        with workflow_run("bench") as run:
            for s in range({steps}):
                with run.step("step"):
                    pass
batch(50)  # warm-up
started = time.perf_counter()
batch({runs})
elapsed = time.perf_counter() - started
started = time.monotonic()
ok = handle.shutdown(timeout_millis={timeout_ms})
print(json.dumps({{"run_us": elapsed / {runs} * 1e6, "shutdown_s": time.monotonic() - started,
                   "ok": ok}}))
"""


def child(
    env: dict[str, str], runs: int, steps: int, timeout_ms: int, *, metrics: bool | None = None
) -> dict[str, float]:
    """One measurement in a fresh interpreter (*metrics*: ``configure(metrics=...)``)."""
    with tempfile.TemporaryDirectory() as tmp:
        code = CHILD.format(
            url=f"sqlite:///{tmp}/h.db",
            runs=runs,
            steps=steps,
            timeout_ms=timeout_ms,
            metrics=metrics,
        )
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        result = subprocess.run(
            [sys.executable, "-c", code],
            env={**clean, **env, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=True,
        )
        report: dict[str, float] = json.loads(result.stdout.splitlines()[-1])
        return report


def main() -> None:
    """Run every scenario and print one table row per scenario."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout-ms", type=int, default=2000)
    args = parser.parse_args()

    from tests.collector_support import Collector

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused = closed.getsockname()[1]
    closed.close()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    blackhole = hole.getsockname()[1]
    scenarios: list[tuple[str, dict[str, str] | None, bool | None]] = [("no OTLP", {}, None)]
    workdir = Path(tempfile.mkdtemp())
    collector = None
    if os.environ.get("FLOWTEL_OTELCOL"):
        collector = Collector(workdir).start()
        up = collector.otlp_env("grpc")
        scenarios.append(("collector up", up, None))
        scenarios.append(("collector up, no metrics", up, False))
        sampled = {
            **up,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        }
        scenarios.append(("collector up, 10% traces", sampled, None))
    for name, port in (("refused", refused), ("black hole", blackhole)):
        for protocol in ("grpc", "http/protobuf"):
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            }
            scenarios.append((f"{name} ({protocol})", env, None))
    print(f"{args.runs} runs x {args.steps} steps, best of {args.repeat}; shutdown bound "
          f"{args.timeout_ms} ms")  # fmt: skip
    print(f"{'scenario':<26} {'µs per run':>11} {'µs per span':>12} {'shutdown s':>11}")
    try:
        for name, env, metrics in scenarios:
            reports = [
                child(env or {}, args.runs, args.steps, args.timeout_ms, metrics=metrics)
                for _ in range(args.repeat)
            ]
            best = min(r["run_us"] for r in reports)
            shutdown = statistics.median(r["shutdown_s"] for r in reports)
            per_span = best / (args.steps + 1)
            print(f"{name:<26} {best:>11.0f} {per_span:>12.1f} {shutdown:>11.2f}")
    finally:
        hole.close()
        if collector is not None:
            collector.stop()


if __name__ == "__main__":
    main()
