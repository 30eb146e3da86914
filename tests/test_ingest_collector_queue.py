"""The collector's sending queue is persistent: traces queued while the backend is down survive
a restart of the collector (issue 13, item 16).

The genuine collector (``FLOWTEL_OTELCOL``) runs ``otel-collector.yaml`` with the test overlay;
its production ``otlp_grpc`` exporter points at a loopback port where an OTLP/gRPC trace
service this test controls (:class:`OTLPBackend`) is started and stopped at will. Spans posted
while the backend is down wait in the queue; the collector is stopped and started again with the
same storage directory, then the backend comes up: every span arrives. With the in-memory queue
the collector shipped before, the restart lost them all.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.collector_support import Collector, free_ports


class OTLPBackend(trace_service_pb2_grpc.TraceServiceServicer):
    """A trace store on *port* that records the span ids it receives (OTLP/gRPC)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.span_ids: list[str] = []
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    def Export(  # the generated service's method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.span_ids.extend(s.span_id.hex() for s in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)
        server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None


def post_spans(endpoint: str, count: int, service: str) -> list[str]:
    """POST *count* spans as OTLP/JSON to the collector; return their span ids."""
    now = time.time_ns()
    span_ids = [os.urandom(8).hex() for _ in range(count)]
    spans = [
        {
            "traceId": os.urandom(16).hex(),
            "spanId": span_id,
            "name": f"queued-{n}",
            "kind": 1,
            "startTimeUnixNano": str(now),
            "endTimeUnixNano": str(now + 1_000_000),
        }
        for n, span_id in enumerate(span_ids)
    ]
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}],
            }
        ]
    }
    request = urllib.request.Request(
        f"{endpoint}/v1/traces",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return span_ids


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def test_traces_queued_while_the_backend_is_down_survive_a_collector_restart(
    tmp_path: Path,
) -> None:
    (backend_port,) = free_ports(1)
    backend = OTLPBackend(backend_port)
    collector = Collector(tmp_path)
    collector.env["FLOWTEL_TRACES_BACKEND"] = f"127.0.0.1:{backend_port}"
    collector.start()
    try:
        sent = post_spans(collector.http_endpoint, 25, "queued")
        # Into the exporter's queue (batch timeout 200 ms), then a first failed attempt.
        assert wait_for(lambda: len(list(collector.spans("queued"))) == 25, 10)
        time.sleep(1.0)
    finally:
        collector.stop()
    assert backend.span_ids == []
    storage = Path(collector.env["FLOWTEL_COLLECTOR_STORAGE_DIR"])
    assert any(storage.iterdir()), "the queue left nothing on disk"

    backend.start()
    restarted = Collector(tmp_path)
    restarted.env.update(
        {k: v for k, v in collector.env.items() if k.startswith(("FLOWTEL_TRACES", "FLOWTEL_COLL"))}
    )
    restarted.start()
    try:
        arrived = wait_for(lambda: set(sent) <= set(backend.span_ids), 30)
    finally:
        restarted.stop()
        backend.stop()
    assert arrived, f"{len(set(sent) - set(backend.span_ids))} of 25 queued spans never arrived"
    assert sorted(set(backend.span_ids)) == sorted(sent)
