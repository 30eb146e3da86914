"""Ingest against in-process: spans/s committed, and the worker's cost per step.

Two comparisons, each a ratio against a baseline measured in the same process, rounds
interleaved (see :mod:`benchmarks.common`):

1. **Committed spans per second**, on the same database: the spans of N workflows are recorded
   once with flowtel's API; then, round by round, (a) the in-process
   ``WorkflowHistorySpanProcessor`` is handed them as the SDK hands them, each span's
   ``on_start`` at its start and ``on_end`` at its end, then ``force_flush`` (the run's state
   then folds its steps, as ingest's does), and (a') only their ``on_end`` (the figure this
   benchmark gave before 2026-12-07: cheaper, since no run state is folded); and (b)
   they are encoded as OTLP protobuf (the SDK exporter's own encoder), posted to an in-process
   ``flowtel ingest`` server in requests of 2048 spans, each answered once committed: (b1) one
   at a time (as the shipped collector configuration sends them: one queue consumer) and (b4)
   four in flight (a collector with ``sending_queue.num_consumers: 4``: ingest decodes one
   request while the writer commits another's rows; each is still answered only once its own
   rows are committed). Figures: ingest's spans/s ÷ in-process spans/s, for each, against (a)
   and against (a').
2. **Worker's cost per step**: a fresh interpreter per measurement runs W workflows of S steps
   with ``configure()`` in database mode (SQLite, plus OTLP/HTTP export) and in collector mode
   (OTLP/HTTP export only, start signals); both export to a local OTLP sink that answers 200.
   Figure: collector mode's µs per step ÷ database mode's.

Run: ``python3 -m benchmarks.bench_ingest [--db sqlite|postgresql|mysql] [--quick]
[--throughput-only]`` (the last skips the second comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.common import (
    ROOT,
    database_url,
    interleave,
    median,
    ratio_summary,
    reset_tables,
)
from exporters import make_engine
from exporters.db.schema import create_schema
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.ingest.server import IngestServer
from exporters.ingest.sink import IngestSink
from instrumentation import workflow_run

REQUEST_SPANS = 2048


def record_spans(workflows: int, steps: int) -> list[ReadableSpan]:
    """The ended spans of *workflows* runs of *steps* steps, in end order."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for n in range(workflows):
        with workflow_run("bench", context={"server_id": f"s{n}"}, tracer_provider=provider) as r:
            for s in range(steps):
                with r.step(f"step_{s}"):
                    pass
    return list(exporter.get_finished_spans())


def sdk_order(spans: list[ReadableSpan]) -> list[tuple[bool, ReadableSpan]]:
    """``(is start, span)`` in the order the SDK calls a processor: by time, a start before
    an end at the same instant, ends in the order they were exported."""
    calls = [(s.start_time or 0, 0, n, True, s) for n, s in enumerate(spans)]
    calls += [(s.end_time or 0, 1, n, False, s) for n, s in enumerate(spans)]
    return [(start, span) for *_, start, span in sorted(calls, key=lambda c: c[:3])]


def in_process(url: str, spans: list[ReadableSpan], spool: str, starts: bool = True) -> float:
    calls = sdk_order(spans) if starts else [(False, span) for span in spans]
    processor = WorkflowHistorySpanProcessor(
        make_engine(url), service_name="bench", spool_dir=spool, create_tables=False
    )
    started = time.perf_counter()
    for start, span in calls:
        if start:
            processor.on_start(span)  # type: ignore[arg-type]  # the SDK passes its Span
        else:
            processor.on_end(span)
    ok = processor.force_flush(120_000)
    elapsed = time.perf_counter() - started
    processor.shutdown()
    assert ok, "the in-process writer did not commit"
    return len(spans) / elapsed


def through_ingest(url: str, spans: list[ReadableSpan], spool: str, in_flight: int = 1) -> float:
    bodies = [
        encode_spans(spans[i : i + REQUEST_SPANS]).SerializeToString()
        for i in range(0, len(spans), REQUEST_SPANS)
    ]
    sink = IngestSink(url, processor_options={"spool_dir": spool, "create_tables": False})
    server = IngestServer(sink, "127.0.0.1:0", max_body_bytes=64 * 2**20).start()

    def post(body: bytes) -> None:
        request = urllib.request.Request(
            f"{server.url}/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(in_flight) as senders:
            list(senders.map(post, bodies))  # re-raises a sender's failure
        elapsed = time.perf_counter() - started
    finally:
        server.shutdown()
        sink.close()
    return len(spans) / elapsed


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # the base class's naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # the base's parameter name
        pass


WORKER = """
import json, sys, time
from exporters import configure
from instrumentation import workflow_run
mode, url, runs, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kwargs = {"history": "collector"} if mode == "collector" else {"database_url": url}
handle = configure(service_name="bench", metrics=False, logs=False, **kwargs)
def work(count):
    for n in range(count):
        with workflow_run("bench", context={"server_id": f"s{n}"}) as run:
            for s in range(steps):
                with run.step(f"step_{s}"):
                    pass
work(20)
started = time.perf_counter()
work(runs)
elapsed = time.perf_counter() - started
handle.shutdown(timeout_millis=60_000)
print(json.dumps({"us_per_step": elapsed / (runs * steps) * 1e6}))
"""


def worker_cost(mode: str, otlp: str, runs: int, steps: int, tmp: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "FLOWTEL_"))}
    env.update(
        {
            "PYTHONPATH": ROOT,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "FLOWTEL_SPOOL_DIR": tmp,
        }
    )
    url = f"sqlite:///{tmp}/worker-{time.monotonic_ns()}.db"
    out = subprocess.run(
        [sys.executable, "-c", WORKER, mode, url, str(runs), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["us_per_step"])


def run(backend: str = "sqlite", quick: bool = False, worker: bool = True) -> dict[str, Any]:
    workflows, steps, rounds = (200, 10, 3) if quick else (1000, 23, 5)
    spans = record_spans(workflows, steps)
    url = database_url(backend, "ingest")
    engine = make_engine(url)
    create_schema(engine)
    tmp = tempfile.mkdtemp(prefix="flowtel-bench-ingest-")

    def fresh(subject: Any) -> Any:
        def call() -> float:
            reset_tables(engine)
            return float(subject(url, spans, tmp))

        return call

    def four_in_flight(url: str, spans: list[ReadableSpan], spool: str) -> float:
        return through_ingest(url, spans, spool, in_flight=4)

    def ends_only(url: str, spans: list[ReadableSpan], spool: str) -> float:
        return in_process(url, spans, spool, starts=False)

    throughput = interleave(
        rounds,
        {
            "in_process": fresh(in_process),
            "in_process_ends_only": fresh(ends_only),
            "ingest": fresh(through_ingest),
            "ingest_4_in_flight": fresh(four_in_flight),
        },
    )
    engine.dispose()
    result: dict[str, Any] = {
        "backend": backend,
        "spans": len(spans),
        "spans_per_s": {k: median(v) for k, v in throughput.items()},
    }
    for subject in ("ingest", "ingest_4_in_flight"):
        for baseline in ("in_process", "in_process_ends_only"):
            result[f"{subject}_vs_{baseline}"] = ratio_summary(
                throughput[subject], throughput[baseline]
            )
    if not worker:
        return result

    otlp_server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=otlp_server.serve_forever, daemon=True).start()
    otlp = f"http://127.0.0.1:{otlp_server.server_address[1]}"
    runs = 100 if quick else 400
    cost = interleave(
        rounds,
        {
            "database": lambda: worker_cost("database", otlp, runs, steps, tmp),
            "collector": lambda: worker_cost("collector", otlp, runs, steps, tmp),
        },
    )
    otlp_server.shutdown()
    return result | {
        "worker_us_per_step": {k: median(v) for k, v in cost.items()},
        "collector_vs_database_per_step": ratio_summary(cost["collector"], cost["database"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--throughput-only", action="store_true", help="skip the worker's cost per step"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.db, args.quick, worker=not args.throughput_only), indent=2))


if __name__ == "__main__":
    main()
