"""``flowtel ingest``: OTLP/HTTP in, the same history rows as the in-process processor out.

The receiver runs in this process on a free loopback port (:class:`IngestServer` over an
:class:`IngestSink`) and is fed by the SDK's own OTLP/HTTP exporter, by hand-written OTLP JSON
and by broken requests. Rows are compared with what the in-process
``WorkflowHistorySpanProcessor`` writes from the very same spans, on SQLite, PostgreSQL and
MariaDB.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from exporters import workflow_history, workflow_step_history
from exporters.db.engine import make_engine
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.ingest.server import IngestServer, InsecureListenError
from exporters.ingest.sink import IngestSink
from instrumentation import attributes as attr
from instrumentation import workflow_run

IGNORED = {"id", "seq", "updated_at", "host", "pid"}
TOKEN = "s3cret-token"


def rows(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            runs = connection.execute(sa.select(workflow_history).order_by("run_id"))
            run_rows = [{k: v for k, v in r._mapping.items() if k not in IGNORED} for r in runs]
            for row in run_rows:  # when the row was written, not what happened
                (row.get("metadata") or {}).get("timestamps", {}).pop("updated_at", None)
                # Python's OTLP exporter does not send the W3C trace flags (only is-remote bits),
                # so ingest knows "sampled" but not the random-trace-id bit: compare the rest.
                trace = (row.get("metadata") or {}).get("trace") or {}
                if trace.get("traceparent"):
                    trace["traceparent"] = trace["traceparent"][:-2]
            steps = connection.execute(sa.select(workflow_step_history).order_by("span_id"))
            step_rows = [{k: v for k, v in r._mapping.items() if k not in IGNORED} for r in steps]
    finally:
        engine.dispose()
    return run_rows, step_rows


def differences(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[Any]:
    assert len(got) == len(expected)
    return [
        (n, key, *_first_difference(g[key], e[key]))
        for n, (g, e) in enumerate(zip(got, expected, strict=True))
        for key in e
        if g[key] != e[key]
    ]


def _first_difference(got: Any, expected: Any) -> tuple[Any, Any]:
    if isinstance(got, dict) and isinstance(expected, dict):
        for key in sorted(set(got) | set(expected)):
            if got.get(key) != expected.get(key):
                return (key, *_first_difference(got.get(key), expected.get(key)))
    return got, expected


@pytest.fixture
def ingest(db_url: str, tmp_path: Path) -> Iterator[IngestServer]:
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "ingest-spool"})
    server = IngestServer(sink, "127.0.0.1:0").start()
    yield server
    server.shutdown()
    sink.close()


def post(
    url: str,
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        f"{url}/v1/traces", data=body, headers={"Content-Type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def otlp_json(service: str, spans: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                    },
                    "scopeSpans": [{"scope": {"name": "hand-written"}, "spans": spans}],
                }
            ]
        }
    ).encode()


def kv(**values: Any) -> list[dict[str, Any]]:
    out = []
    for key, value in values.items():
        key = key.replace("__", ".")
        if isinstance(value, bool):
            out.append({"key": key, "value": {"boolValue": value}})
        elif isinstance(value, int):
            out.append({"key": key, "value": {"intValue": str(value)}})
        else:
            out.append({"key": key, "value": {"stringValue": value}})
    return out


def four_runs_in_process_and_through(
    exporter: SpanExporter, db_url: str, tmp_path: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Four workflows (the third failing) recorded in process and sent through *exporter*;
    asserts ingest's rows in *db_url* are the in-process ones and returns them."""
    direct_url = f"sqlite:///{tmp_path}/direct.db"
    direct = WorkflowHistorySpanProcessor(
        make_engine(direct_url), service_name="sdk-worker", spool=False
    )
    provider = TracerProvider(resource=Resource({"service.name": "sdk-worker"}))
    provider.add_span_processor(direct)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    for n in range(4):
        try:
            with workflow_run(
                "provision_server",
                context={"server_id": f"srv-{n}", "password": "hunter2"},
                tracer_provider=provider,
            ) as run:
                with run.step("select_machine"):
                    pass
                with run.step("commission"):
                    if n == 2:
                        raise TimeoutError("still Commissioning after 1800 s")
                with run.step("validate"):
                    pass
        except TimeoutError:
            pass
    assert direct.force_flush(10_000)
    provider.shutdown()
    expected_runs, expected_steps = rows(direct_url)
    got_runs, got_steps = rows(db_url)
    assert len(got_runs) == 4 and len(got_steps) == 11
    diffs = differences(got_runs, expected_runs)
    assert not diffs, "\n".join(map(repr, diffs))
    assert differences(got_steps, expected_steps) == []
    return got_runs, got_steps


def test_sdk_spans_become_the_rows_the_in_process_processor_writes(
    ingest: IngestServer, db_url: str, tmp_path: Path
) -> None:
    """flowtel's API on a plain provider: in-process rows == rows ingest wrote from OTLP."""
    exporter = OTLPSpanExporter(endpoint=f"{ingest.url}/v1/traces")
    got_runs, got_steps = four_runs_in_process_and_through(exporter, db_url, tmp_path)
    failed = [r for r in got_runs if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error_type"] == "TimeoutError"
    assert "hunter2" not in json.dumps([got_runs, got_steps], default=str)


def test_spans_posted_as_otlp_json_become_rows_redacted_and_bounded(
    ingest: IngestServer, db_url: str
) -> None:
    """Spans from another language: the workflow.* contract alone makes rows; secrets and
    oversize values from elsewhere are cleaned at ingest."""
    trace_id, run_span, step1, step2 = os.urandom(16).hex(), *(os.urandom(8).hex() for _ in "abc")
    run_id = str(uuid.uuid4())
    t0 = time.time_ns()
    ms = 1_000_000
    spans = [
        {
            "traceId": trace_id,
            "spanId": step1,
            "parentSpanId": run_span,
            "name": "fetch",
            "startTimeUnixNano": str(t0 + ms),
            "endTimeUnixNano": str(t0 + 5 * ms),
            "attributes": kv(
                workflow__run_id=run_id,
                workflow__step__name="fetch",
                workflow__step__index=1,
                workflow__step__status="completed",
                workflow__step__message="fetched from postgres://admin:pa55word@db/x",
            ),
        },
        {
            "traceId": trace_id,
            "spanId": step2,
            "parentSpanId": run_span,
            "name": "apply",
            "startTimeUnixNano": str(t0 + 6 * ms),
            "endTimeUnixNano": str(t0 + 9 * ms),
            "attributes": kv(
                workflow__run_id=run_id,
                workflow__step__name="apply",
                workflow__step__index=2,
                workflow__step__status="failed",
            ),
            "events": [
                {
                    "name": "exception",
                    "timeUnixNano": str(t0 + 8 * ms),
                    "attributes": kv(
                        exception__type="PermissionError",
                        exception__message="denied with token=abcdef123456",
                        exception__stacktrace="Traceback:\n" + "x" * 100_000,
                    ),
                }
            ],
            "status": {"code": 2, "message": "PermissionError: denied"},
        },
        {
            "traceId": trace_id,
            "spanId": run_span,
            "name": "deploy",
            "kind": 1,
            "startTimeUnixNano": str(t0),
            "endTimeUnixNano": str(t0 + 10 * ms),
            "attributes": kv(
                workflow__run_id=run_id,
                workflow__name="deploy",
                workflow__id="deploy_web-1",
                workflow__total_steps=2,
                workflow__context__server_id="web-1",
                workflow__context__api_token="tok-123",
                workflow__context_json=json.dumps({"server_id": "web-1", "api_token": "tok-123"}),
                workflow__status="failed",
                error__type="PermissionError",
            ),
            "status": {"code": 2, "message": "PermissionError: denied"},
        },
        {  # not a workflow span: ignored
            "traceId": trace_id,
            "spanId": os.urandom(8).hex(),
            "name": "GET /",
            "startTimeUnixNano": str(t0),
            "endTimeUnixNano": str(t0 + ms),
        },
    ]
    status, headers, body = post(ingest.url, otlp_json("go-worker", spans))
    assert (status, body) == (200, b"{}")
    assert headers["Content-Type"] == "application/json"
    (run,), steps = rows(db_url)
    assert run["run_id"] == run_id and run["workflow_id"] == "deploy_web-1"
    assert run["status"] == "failed" and run["error_type"] == "PermissionError"
    assert run["service_name"] == "go-worker" and run["server_id"] == "web-1"
    assert run["trace_id"] == trace_id and run["span_id"] == run_span
    assert run["duration_ms"] == 10
    assert [(s["step_name"], s["status"], s["step_index"]) for s in steps] == sorted(
        [("fetch", "completed", 1), ("apply", "failed", 2)],
        key=lambda s: {1: step1, 2: step2}[s[2]],
    )
    apply = next(s for s in steps if s["step_name"] == "apply")
    assert apply["error_type"] == "PermissionError"
    assert apply["error_message"].startswith("denied with token=")
    assert len(apply["error_stacktrace"].encode()) <= 16 * 1024
    stored = json.dumps([run, steps], default=str)
    for secret in ("tok-123", "pa55word", "abcdef123456"):
        assert secret not in stored


def test_protobuf_and_gzip_and_an_empty_request_are_accepted(
    ingest: IngestServer, db_url: str
) -> None:
    run_id = str(uuid.uuid4())
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = os.urandom(16), os.urandom(8), "run"
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1_000_000
    for key, value in ((attr.RUN_ID, run_id), (attr.RUN_NAME, "gz")):
        item = span.attributes.add()
        item.key, item.value.string_value = key, value
    body = gzip.compress(request.SerializeToString())
    status, headers, answer = post(
        ingest.url, body, "application/x-protobuf", {"Content-Encoding": "gzip"}
    )
    assert status == 200 and headers["Content-Type"] == "application/x-protobuf"
    assert answer == b""  # an empty ExportTraceServiceResponse
    assert post(ingest.url, b"", "application/x-protobuf")[0] == 200
    assert post(ingest.url, b"{}")[0] == 200
    (run,), _ = rows(db_url)
    assert run["run_id"] == run_id and run["status"] == "completed"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_bad_requests_are_answered_and_never_stop_the_service(db_url: str, tmp_path: Path) -> None:
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "spool"})
    server = IngestServer(sink, "127.0.0.1:0", token=TOKEN, max_body_bytes=4096).start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert post(server.url, b"\xff\x00garbage", "application/x-protobuf", auth)[0] == 400
        assert post(server.url, b"{not json", "application/json", auth)[0] == 400
        assert post(server.url, b'{"resourceSpans": 3}', "application/json", auth)[0] == 400
        assert post(server.url, b"{}", "text/plain", auth)[0] == 400
        status, _, _ = post(server.url, b"x" * 5000, "application/x-protobuf", auth)
        assert status == 413
        bomb = gzip.compress(b"\x00" * 100_000)
        gz = {**auth, "Content-Encoding": "gzip"}
        assert post(server.url, bomb, "application/x-protobuf", gz)[0] == 413
        status, headers, _ = post(server.url, b"{}")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        assert post(server.url, b"{}", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert post(server.url, b"{}", headers={"Authorization": TOKEN})[0] == 401
        # still serving: a real workflow span after the bad input reaches a writer and commits
        run_id = str(uuid.uuid4())
        span = {
            "traceId": os.urandom(16).hex(),
            "spanId": os.urandom(8).hex(),
            "name": "after",
            "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000001000000000",
            "attributes": kv(workflow__run_id=run_id, workflow__name="after"),
        }
        assert post(server.url, otlp_json("svc", [span]), "application/json", auth)[0] == 200
        request = urllib.request.Request(f"{server.url}/stats", headers=auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            stats = json.loads(response.read())
        assert stats["requests"] == 1 and stats["committed_requests"] == 1
        assert stats["processors"]["svc"]["runs_written"] >= 1
    finally:
        server.shutdown()
        sink.close()
    (run,), _ = rows(db_url)
    assert (run["run_id"], run["status"]) == (run_id, "completed")


def test_overload_and_an_unavailable_database_ask_the_client_to_retry(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there afterwards
    dead = f"postgresql+psycopg://flowtel:x@127.0.0.1:{port}/flowtel?connect_timeout=1"
    sink = IngestSink(dead, commit_timeout=1.0, processor_options={"spool_dir": tmp_path / "spool"})
    server = IngestServer(sink, "127.0.0.1:0", retry_after=7).start()
    body = otlp_json(
        "svc",
        [
            {
                "traceId": os.urandom(16).hex(),
                "spanId": os.urandom(8).hex(),
                "name": "run",
                "startTimeUnixNano": "1",
                "endTimeUnixNano": "2",
                "attributes": kv(workflow__run_id=str(uuid.uuid4())),
            }
        ],
    )
    try:
        status, headers, _ = post(server.url, body)
        assert status == 503 and headers["Retry-After"] == "7"
        full = IngestServer(sink, "127.0.0.1:0", max_in_flight=1).start()
        try:
            assert full.acquire()  # the only slot is taken
            status, headers, _ = post(full.url, body)
            assert status == 429 and headers["Retry-After"] == "2"
        finally:
            full.shutdown()
    finally:
        server.shutdown()
        sink.close(timeout=2)
    assert sink.stats.uncommitted_requests == 1


def test_a_non_loopback_address_needs_a_token(tmp_path: Path) -> None:
    sink = IngestSink(f"sqlite:///{tmp_path}/h.db")
    with pytest.raises(InsecureListenError):
        IngestServer(sink, "0.0.0.0:0")
    server = IngestServer(sink, "0.0.0.0:0", token=TOKEN)
    server.shutdown()
    sink.close()


def test_the_command_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from exporters.cli import main

    result = CliRunner().invoke(
        main, ["ingest", "--db", f"sqlite:///{tmp_path}/h.db", "--listen", "0.0.0.0:0"]
    )
    assert result.exit_code == 2 and "without a token" in result.output
    result = CliRunner().invoke(main, ["ingest", "--db", "not a url"])
    assert result.exit_code == 2


def test_spans_built_with_the_plain_sdk_become_rows(ingest: IngestServer, db_url: str) -> None:
    """No flowtel API at all: a plain SDK tracer setting the workflow.* attributes by hand."""
    from opentelemetry.trace import Status, StatusCode

    provider = TracerProvider(resource=Resource({"service.name": "plain"}))
    exporter = OTLPSpanExporter(endpoint=f"{ingest.url}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("somebody-else")
    run_id = str(uuid.uuid4())
    with tracer.start_as_current_span(
        "nightly_backup",
        attributes={attr.RUN_ID: run_id, attr.RUN_NAME: "nightly_backup", attr.RUN_TOTAL_STEPS: 2},
    ) as run:
        with tracer.start_as_current_span(
            "dump", attributes={attr.RUN_ID: run_id, attr.STEP_NAME: "dump", attr.STEP_INDEX: 1}
        ):
            pass
        with tracer.start_as_current_span(
            "upload", attributes={attr.RUN_ID: run_id, attr.STEP_NAME: "upload", attr.STEP_INDEX: 2}
        ) as upload:
            upload.record_exception(ConnectionError("bucket unreachable, password=swordfish"))
            upload.set_attribute(attr.STEP_STATUS, "failed")
            upload.set_status(Status(StatusCode.ERROR, "ConnectionError"))
        run.set_attribute(attr.RUN_STATUS, "failed")
        run.set_attribute(attr.ERROR_TYPE, "ConnectionError")
        run.set_status(Status(StatusCode.ERROR, "upload failed"))
    provider.shutdown()
    (row,), steps = rows(db_url)
    assert (row["run_id"], row["workflow_name"], row["status"]) == (
        run_id,
        "nightly_backup",
        "failed",
    )
    assert row["error_type"] == "ConnectionError" and row["total_steps"] == 2
    assert row["service_name"] == "plain" and row["steps_completed"] == 1
    by_name = {s["step_name"]: s for s in steps}
    assert by_name["dump"]["status"] == "completed"
    assert by_name["upload"]["status"] == "failed"
    assert by_name["upload"]["error_type"] == "ConnectionError"
    assert "swordfish" not in by_name["upload"]["error_message"]
    assert by_name["upload"]["error_message"].startswith("bucket unreachable")


def test_collector_mode_opens_no_database_and_says_what_it_ignores(tmp_path: Path) -> None:
    from tests.collector_support import run_child

    db = tmp_path / "never.db"
    code = f"""
import logging, sys
logging.basicConfig(stream=sys.stdout, level=logging.WARNING)
from exporters import configure
try:
    configure(history="sometimes", logs=False)
except ValueError as exc:
    print("refused:", exc)
handle = configure(history="collector", database_url="sqlite:///{db}", spool_dir="/x",
                   otlp_endpoint="http://127.0.0.1:9", logs=False, metrics=False)
print(repr(handle), handle.database_url)
handle.shutdown(timeout_millis=1000)
"""
    out = run_child(code).stdout
    assert "refused: history must be 'database' or 'collector'" in out
    assert "ignored: ['database_url', 'spool_dir']" in out
    assert "<Flowtel history=collector> flowtel-collector://" in out
    assert not db.exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_start_signal_after_its_runs_end_is_dropped_and_counted(
    ingest: IngestServer, db_url: str
) -> None:
    """The collector does not keep order across batches: a late signal never reopens a run."""
    trace_id, span_id, run_id = os.urandom(16).hex(), os.urandom(8).hex(), str(uuid.uuid4())
    run = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "late",
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": "1700000001000000000",
        "attributes": kv(workflow__run_id=run_id, workflow__name="late"),
    }
    signal = {
        **run,
        "endTimeUnixNano": run["startTimeUnixNano"],
        "attributes": kv(workflow__run_id=run_id, workflow__name="late", flowtel__signal="start"),
    }
    assert post(ingest.url, otlp_json("svc", [run]))[0] == 200
    assert post(ingest.url, otlp_json("svc", [signal]))[0] == 200
    (row,), _ = rows(db_url)
    assert row["status"] == "completed" and row["duration_ms"] == 1000
    assert ingest.sink.stats.late_signals_dropped == 1
    assert ingest.sink.processor("svc").stats["active_runs"] == 0
