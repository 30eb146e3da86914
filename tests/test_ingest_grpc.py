"""``flowtel ingest`` over OTLP/gRPC: ``TraceService/Export``, answered as OTLP/gRPC specifies.

The gRPC front end (:class:`GrpcIngestServer`, beside an :class:`IngestServer` whose rules it
shares) runs in this process on a free loopback port over a real :class:`IngestSink`, fed by the
SDK's own OTLP/gRPC exporter and by a raw gRPC client that sends broken messages and reads the
status codes and the ``google.rpc.RetryInfo`` in the trailing metadata. Rows are compared with
what the in-process processor writes from the very same spans, on SQLite, PostgreSQL and
MariaDB. The command (``--listen-grpc``) runs as its own process.
"""

from __future__ import annotations

import enum
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from exporters import workflow_history
from exporters.ingest.grpc import EXPORT_METHOD, GrpcIngestServer
from exporters.ingest.server import IngestServer, InsecureListenError
from exporters.ingest.sink import IngestSink, Outcome
from instrumentation import attributes as attr
from tests.collector_support import ROOT, free_ports, healthy, wait_until
from tests.spawn import spawn, stop
from tests.test_ingest import four_runs_in_process_and_through

TOKEN = "s3cret-token"


@contextmanager
def serving(
    sink: IngestSink, listen: str = "127.0.0.1:0", **http_options: Any
) -> Iterator[GrpcIngestServer]:
    """gRPC on a free loopback port beside an (idle) HTTP server built with *http_options*;
    both stopped afterwards (the sink is the caller's)."""
    http = IngestServer(sink, "127.0.0.1:0", **http_options)
    try:
        server = GrpcIngestServer(http, listen).start()
        try:
            yield server
        finally:
            server.shutdown()
    finally:
        http.shutdown()


@pytest.fixture
def grpc_ingest(db_url: str, tmp_path: Path) -> Iterator[GrpcIngestServer]:
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "ingest-spool"})
    with serving(sink) as server:
        yield server
    sink.close()


def request_bytes(run_id: str | None = None, service: str = "svc") -> bytes:
    """One OTLP request with one run span (a fresh run id unless given)."""
    span = Span(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        name="provision_server",
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_001_000_000_000,
        attributes=[
            KeyValue(key=attr.RUN_ID, value=AnyValue(string_value=run_id or str(uuid.uuid4())))
        ],
    )
    resource_spans = ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])
    resource_spans.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    return ExportTraceServiceRequest(resource_spans=[resource_spans]).SerializeToString()


class Answer:
    """What one raw ``Export`` call got back."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Any) -> None:
        self.code, self.details = code, details
        self.retry_delay: float | None = None
        for key, value in trailers or ():
            if key == "grpc-status-details-bin":
                status = Status.FromString(value)
                assert status.code == code.value[0]
                for detail in status.details:
                    info = RetryInfo()
                    if detail.Unpack(info):
                        self.retry_delay = info.retry_delay.ToTimedelta().total_seconds()


def export(
    target: str,
    body: bytes,
    token: str | None = None,
    compression: grpc.Compression | None = None,
) -> Answer:
    """Call ``TraceService/Export`` with raw bytes, as any OTLP/gRPC client would."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(EXPORT_METHOD)
        try:
            response, state = call.with_call(
                body, metadata=metadata, timeout=30, compression=compression
            )
        except grpc.RpcError as exc:
            failed: Any = exc  # a grpc.Call too
            return Answer(failed.code(), failed.details(), failed.trailing_metadata())
    assert ExportTraceServiceResponse.FromString(response) == ExportTraceServiceResponse()
    return Answer(state.code(), state.details() or "", state.trailing_metadata())


def test_sdk_spans_over_grpc_become_the_rows_the_in_process_processor_writes(
    grpc_ingest: GrpcIngestServer, db_url: str, tmp_path: Path
) -> None:
    """flowtel's API on a plain provider with the SDK's OTLP/gRPC exporter: same rows."""
    exporter = OTLPSpanExporter(endpoint=grpc_ingest.target, insecure=True)
    got_runs, got_steps = four_runs_in_process_and_through(exporter, db_url, tmp_path)
    assert "hunter2" not in repr([got_runs, got_steps])
    assert grpc_ingest.sink.stats.committed_requests >= 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_gzip_and_an_empty_request_are_committed_with_ok(db_url: str, tmp_path: Path) -> None:
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "spool"})
    run_id = str(uuid.uuid4())
    try:
        with serving(sink) as server:
            assert export(server.target, b"").code is grpc.StatusCode.OK
            gzip = grpc.Compression.Gzip
            gzipped = export(server.target, request_bytes(run_id), compression=gzip)
            assert gzipped.code is grpc.StatusCode.OK
    finally:
        sink.close()
    engine = sa.create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(sa.select(workflow_history.c.run_id)).scalars().all() == [run_id]
    engine.dispose()
    assert sink.stats.committed_requests == 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_requests_get_invalid_argument_unauthenticated_or_too_large_and_never_stop_it(
    db_url: str, tmp_path: Path
) -> None:
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "spool"})
    try:
        with serving(sink, token=TOKEN, max_body_bytes=4096) as server:
            check_bad_requests(server.target)
    finally:
        sink.close()
    assert server.snapshot() == {
        "unauthenticated": 2,
        "malformed": 1,
        "too_many_in_flight": 0,
        "internal_errors": 0,
        "unknown_outcomes": 0,
    }
    assert sink.stats.requests == 1 and sink.stats.committed_requests == 1


def check_bad_requests(target: str) -> None:
    """Each bad request gets its code; the server still answers afterwards."""
    malformed = export(target, b"\xff\x00garbage", TOKEN)
    assert malformed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert malformed.retry_delay is None
    too_large = export(target, b"\x00" * 5000, TOKEN)  # over the limit: not retryable
    assert too_large.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert too_large.retry_delay is None
    # a few hundred bytes on the wire, gzip-compressed: the limit holds after decompression
    inflated = export(target, b"\x00" * 100_000, TOKEN, compression=grpc.Compression.Gzip)
    assert inflated.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert export(target, b"").code is grpc.StatusCode.UNAUTHENTICATED
    assert export(target, b"", "wrong").code is grpc.StatusCode.UNAUTHENTICATED
    assert export(target, b"", TOKEN).code is grpc.StatusCode.OK  # still serving


def test_overload_and_an_unavailable_database_are_retryable_with_retry_info(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there afterwards
    dead = f"postgresql+psycopg://flowtel:x@127.0.0.1:{port}/flowtel?connect_timeout=1"
    sink = IngestSink(dead, commit_timeout=1.0, processor_options={"spool_dir": tmp_path / "spool"})
    try:
        with serving(sink, retry_after=7) as server:
            answer = export(server.target, request_bytes())
            assert answer.code is grpc.StatusCode.UNAVAILABLE and answer.retry_delay == 7
        with serving(sink, max_in_flight=1) as full:
            assert full.http.acquire()  # the only slot (shared with OTLP/HTTP) is taken
            answer = export(full.target, request_bytes())
            assert answer.code is grpc.StatusCode.RESOURCE_EXHAUSTED and answer.retry_delay == 2
    finally:
        sink.close(timeout=2)
    assert sink.stats.uncommitted_requests == 1
    assert full.snapshot()["too_many_in_flight"] == 1


class _Outcome(enum.Enum):
    """Stand-ins for members a newer sink may add, and one nobody knows."""

    BUSY = "busy"
    TOO_LARGE = "too large"
    INVALID = "invalid"
    SOMETHING_NEW = "something new"


class _AnsweringSink(IngestSink):
    """A real sink that answers every non-empty request with a chosen outcome."""

    answer: Any = Outcome.COMMITTED

    def submit(self, spans: list[Any], received: int) -> Any:
        return self.answer


@pytest.mark.parametrize(
    ("outcome", "code", "retry"),
    [
        (Outcome.BUSY, grpc.StatusCode.RESOURCE_EXHAUSTED, 2.0),
        (Outcome.NOT_COMMITTED, grpc.StatusCode.UNAVAILABLE, 2.0),
        (_Outcome.TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED, None),
        (_Outcome.INVALID, grpc.StatusCode.INVALID_ARGUMENT, None),
        (_Outcome.SOMETHING_NEW, grpc.StatusCode.UNAVAILABLE, 2.0),
    ],
)
def test_each_sink_outcome_maps_to_its_grpc_code_and_unknown_ones_are_retryable_and_counted(
    tmp_path: Path, outcome: Any, code: grpc.StatusCode, retry: float | None
) -> None:
    sink = _AnsweringSink(f"sqlite:///{tmp_path}/h.db")
    sink.answer = outcome
    try:
        with serving(sink) as server:
            answer = export(server.target, request_bytes())
    finally:
        sink.close()
    assert (answer.code, answer.retry_delay) == (code, retry)
    assert server.snapshot()["unknown_outcomes"] == (outcome is _Outcome.SOMETHING_NEW)


def test_a_non_loopback_grpc_address_needs_a_token(tmp_path: Path) -> None:
    sink = IngestSink(f"sqlite:///{tmp_path}/h.db")
    with pytest.raises(InsecureListenError, match="without a token"), serving(sink, "0.0.0.0:0"):
        pass
    with serving(sink, "0.0.0.0:0", token=TOKEN) as server:
        assert server.port > 0
    sink.close()


def test_the_command_serves_grpc_refuses_a_taken_port_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path}/h.db"
    http, grpc_port = free_ports(2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTEL_SPOOL_DIR": str(tmp_path / "spool")}
    command = [sys.executable, "-m", "exporters.cli", "ingest", "--db", db_url]
    log = (tmp_path / "ingest.log").open("wb")
    ingest = spawn(
        [*command, "--listen", f"127.0.0.1:{http}", "--listen-grpc", f"127.0.0.1:{grpc_port}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    wait_until(lambda: healthy(f"http://127.0.0.1:{http}/health"), 30, "ingest")
    run_id = str(uuid.uuid4())
    assert export(f"127.0.0.1:{grpc_port}", request_bytes(run_id)).code is grpc.StatusCode.OK
    (other_http,) = free_ports(1)
    taken = ["--listen", f"127.0.0.1:{other_http}", "--listen-grpc", f"127.0.0.1:{grpc_port}"]
    second = subprocess.run(
        [*command, *taken], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert second.returncode == 1 and f"cannot listen on 127.0.0.1:{grpc_port}" in second.stderr
    assert stop(ingest) == 0
    said = (tmp_path / "ingest.log").read_text()
    assert f"OTLP/gRPC on 127.0.0.1:{grpc_port}" in said and "grpc_malformed 0" in said
    engine = sa.create_engine(db_url)
    with engine.connect() as connection:
        assert connection.execute(sa.select(workflow_history.c.run_id)).scalars().all() == [run_id]
    engine.dispose()
