"""Ingest replicas over OTLP/gRPC: committed spans/s with one, two and three replicas.

The spans of N workflows are recorded once with flowtel's API and grouped as the collector's
``loadbalancing`` exporter groups them: by trace id onto one of the R replicas (a run is one
trace). Round by round, for R = 1, 2, 3 (order alternating, see :mod:`benchmarks.common`), R
``flowtel ingest --listen-grpc`` processes are started on one database (tables emptied, start
not timed), and one client thread per replica sends that replica's requests of 2048 spans over
OTLP/gRPC one after another — as one collector's exporter does per backend — each answered
once committed. Figure: spans/s with R replicas ÷ spans/s with one, same round.

Run: ``python3 -m benchmarks.bench_replicas [--db sqlite|postgresql|mysql] [--quick]``.
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
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

from benchmarks.bench_ingest import REQUEST_SPANS, record_spans
from benchmarks.common import (
    ROOT,
    count_rows,
    database_url,
    interleave,
    median,
    ratio_summary,
    reset_tables,
)
from exporters import make_engine
from exporters.db.schema import create_schema, metadata
from exporters.ingest.grpc import EXPORT_METHOD

REPLICAS = (1, 2, 3)
Replica = subprocess.Popen[bytes]


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def requests_per_replica(spans: Sequence[ReadableSpan], replicas: int) -> list[list[bytes]]:
    """The encoded requests each replica gets when spans are routed by trace id."""
    routed: list[list[ReadableSpan]] = [[] for _ in range(replicas)]
    for span in spans:
        routed[span.context.trace_id % replicas].append(span)
    return [
        [
            encode_spans(part[i : i + REQUEST_SPANS]).SerializeToString()
            for i in range(0, len(part), REQUEST_SPANS)
        ]
        for part in routed
    ]


def start_replicas(url: str, count: int, tmp: str) -> tuple[list[Replica], list[int]]:
    """*count* ingest processes, ready; their processes and gRPC ports."""
    ports = _free_ports(2 * count)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTEL_SPOOL_DIR": tmp}
    base = [sys.executable, "-m", "exporters.cli", "ingest", "--db", url]
    options = ["--commit-timeout", "60", "--max-body", "64"]
    processes: list[Replica] = []
    try:
        for n in range(count):
            listen = ["--listen", f"127.0.0.1:{ports[2 * n]}"]
            listen += ["--listen-grpc", f"127.0.0.1:{ports[2 * n + 1]}"]
            processes.append(
                subprocess.Popen(
                    [*base, *options, *listen],
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 60
        for n, process in enumerate(processes):
            while not _healthy(ports[2 * n]):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ingest replica {n} did not start")
                time.sleep(0.1)
    except BaseException:
        stop_replicas(processes)
        raise
    return processes, ports[1::2]


def stop_replicas(processes: list[Replica]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def send(port: int, bodies: list[bytes], errors: list[str]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        export = channel.unary_unary(EXPORT_METHOD)
        for body in bodies:
            try:
                export(body, timeout=120)
            except grpc.RpcError as exc:
                errors.append(repr(exc))
                return


def through_replicas(
    url: str, engine: Any, spans: Sequence[ReadableSpan], count: int, tmp: str
) -> float:
    reset_tables(engine)
    routed = requests_per_replica(spans, count)
    processes, ports = start_replicas(url, count, tmp)
    errors: list[str] = []
    try:
        threads = [
            threading.Thread(target=send, args=(port, bodies, errors))
            for port, bodies in zip(ports, routed, strict=True)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        stop_replicas(processes)
    if errors:
        raise RuntimeError(f"a replica refused a request: {errors[0]}")
    return len(spans) / elapsed


def run(backend: str = "sqlite", quick: bool = False) -> dict[str, Any]:
    workflows, steps, rounds = (200, 10, 2) if quick else (1000, 23, 3)
    spans = record_spans(workflows, steps)
    url = database_url(backend, "replicas")
    engine = make_engine(url)
    metadata.drop_all(engine)  # a benchmark database of an older schema: start it anew
    create_schema(engine)
    tmp = tempfile.mkdtemp(prefix="flowtel-bench-replicas-")
    subjects = {
        f"replicas_{n}": (lambda n=n: through_replicas(url, engine, spans, n, tmp))
        for n in REPLICAS
    }
    results = interleave(rounds, subjects)
    runs, step_rows = count_rows(url)
    engine.dispose()
    return {
        "backend": backend,
        "spans": len(spans),
        "rounds": rounds,
        "last_round_rows": {"runs": runs, "steps": step_rows},
        "spans_per_s": {k: median(v) for k, v in results.items()},
        "per_round": results,
        **{
            f"{n}_vs_1_replica": ratio_summary(results[f"replicas_{n}"], results["replicas_1"])
            for n in REPLICAS[1:]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.db, args.quick), indent=2))


if __name__ == "__main__":
    main()
