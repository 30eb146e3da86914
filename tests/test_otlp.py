"""OTLP wiring: protocol and endpoint choice, the resource, and shutdown bounded by its timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HTTPMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from exporters import WorkflowHistorySpanProcessor, make_engine, workflow_history
from exporters.configure import Flowtel
from exporters.telemetry.otlp import (
    DEFAULT_TIMEOUT_S,
    OTLPSettings,
    call_with_timeout,
    otlp_protocol,
    otlp_requested,
)
from exporters.telemetry.otlp import make_resource as _resource
from instrumentation import workflow_run
from tests.collector_support import run_child

OTEL_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SERVICE_NAME",
    "FLOWTEL_OTLP_TIMEOUT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_export_is_on_when_asked_or_when_an_endpoint_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert otlp_requested(None) is False
    assert otlp_requested(None, "http://collector:4317") is True
    assert otlp_requested(False, "http://collector:4317") is False
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4317")
    assert otlp_requested(None) is True


def test_protocol_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert otlp_protocol() == "grpc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    assert otlp_protocol() == "http/protobuf"
    assert isinstance(OTLPSettings().span_exporter(), HTTPSpanExporter)
    assert isinstance(OTLPSettings().metric_exporter(), HTTPMetricExporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert isinstance(OTLPSettings().span_exporter(), OTLPSpanExporter)
    assert isinstance(OTLPSettings(protocol="grpc").metric_exporter(), OTLPMetricExporter)
    with pytest.raises(ValueError, match="http/protobuf"):
        otlp_protocol("http/json")


def test_http_endpoint_gets_the_signal_path_and_grpc_keeps_it() -> None:
    http = OTLPSettings("http/protobuf", "http://collector:4318/", {"x-key": "k"}, 2.5)
    assert http._kwargs("traces") == {
        "endpoint": "http://collector:4318/v1/traces",
        "headers": {"x-key": "k"},
        "timeout": 2.5,
    }
    assert http._kwargs("metrics")["endpoint"] == "http://collector:4318/v1/metrics"
    grpc = OTLPSettings("grpc", "https://collector:4317")
    assert grpc._kwargs("traces")["endpoint"] == "https://collector:4317"
    exporter = grpc.span_exporter()
    assert isinstance(exporter, OTLPSpanExporter)
    exporter.shutdown()


def test_endpoint_without_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a scheme"):
        OTLPSettings("grpc", "localhost:4317").span_exporter()


def test_exporter_timeout_defaults_short_unless_a_variable_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert OTLPSettings()._kwargs("traces") == {"timeout": DEFAULT_TIMEOUT_S}
    monkeypatch.setenv("FLOWTEL_OTLP_TIMEOUT", "1.5")
    assert OTLPSettings()._kwargs("traces") == {"timeout": 1.5}
    monkeypatch.delenv("FLOWTEL_OTLP_TIMEOUT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "7")
    assert OTLPSettings()._kwargs("traces") == {}  # the exporter reads the standard variable
    assert OTLPSettings(timeout=3)._kwargs("traces") == {"timeout": 3}


def test_resource_defaults_environment_and_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _resource(None, None, None).attributes
    assert plain["service.version"] and plain["host.name"] == socket.gethostname()
    assert isinstance(plain["process.pid"], int)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.version=9.9,deployment.environment=ci")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    env = _resource(None, None, None).attributes
    assert env["service.version"] == "9.9"  # the environment beats flowtel's default
    assert env["deployment.environment"] == "ci" and env["service.name"] == "from-env"
    explicit = _resource("from-arg", "1.2.3", {"team": "infra"}).attributes
    assert explicit["service.name"] == "from-arg" and explicit["service.version"] == "1.2.3"
    assert explicit["team"] == "infra" and explicit["deployment.environment"] == "ci"


def test_call_with_timeout_reports_success_failure_and_overrun() -> None:
    assert call_with_timeout(lambda: None, 1.0, "ok") is True
    assert call_with_timeout(lambda: False, 1.0, "false") is False
    assert call_with_timeout(lambda: 1 / 0, 1.0, "raises") is False
    release = threading.Event()
    started = time.monotonic()
    assert call_with_timeout(release.wait, 0.2, "stuck") is False
    assert time.monotonic() - started < 2.0
    release.set()


class StuckExporter(SpanExporter):
    """An exporter whose export hangs until shut down, like one talking to a silent collector."""

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        self.closed.wait(60)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.closed.set()


@pytest.fixture
def stuck_handle(tmp_path: Path) -> Iterator[tuple[Flowtel, StuckExporter, TracerProvider]]:
    exporter = StuckExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    engine = make_engine(f"sqlite:///{tmp_path}/history.db")
    history = WorkflowHistorySpanProcessor(engine)
    export = BatchSpanProcessor(exporter, schedule_delay_millis=10)
    provider.add_span_processor(history)
    provider.add_span_processor(export)
    yield (
        Flowtel(engine, provider, history, export, True, span_exporter=exporter),
        exporter,
        provider,
    )
    exporter.closed.set()


def test_shutdown_is_bounded_while_export_hangs(
    stuck_handle: tuple[Flowtel, StuckExporter, TracerProvider],
) -> None:
    """History is written, the stuck export is abandoned, and shutdown returns in time."""
    handle, exporter, provider = stuck_handle
    for _ in range(20):
        with workflow_run("wf", tracer_provider=provider) as run, run.step("only"):
            pass
    deadline = time.monotonic() + 5
    while not exporter.exported and time.monotonic() < deadline:
        time.sleep(0.01)  # the export is now stuck inside the exporter
    started = time.monotonic()
    assert handle.shutdown(timeout_millis=700) is False  # the spans did not get out
    assert time.monotonic() - started < 0.7 + 0.5
    assert exporter.closed.is_set()  # the stuck connection was closed, not left to hang
    with handle.engine.connect() as connection:
        rows = connection.execute(sa.select(sa.func.count()).select_from(workflow_history))
        assert rows.scalar() == 20
    assert handle.shutdown(timeout_millis=700) is True  # idempotent


def test_force_flush_is_bounded_while_export_hangs(
    stuck_handle: tuple[Flowtel, StuckExporter, TracerProvider],
) -> None:
    handle, _, provider = stuck_handle
    with workflow_run("wf", tracer_provider=provider):
        pass
    started = time.monotonic()
    assert handle.force_flush(timeout_millis=500) is False
    assert time.monotonic() - started < 0.5 + 0.5
    handle.shutdown(timeout_millis=500)


DOWN_CHILD = """
import sys, time
from exporters import configure
from instrumentation import workflow_run
handle = configure(database_url=sys.argv[1], service_name="down", logs=False)
for n in range(100):
    with workflow_run("wf") as run:
        for s in range(5):
            with run.step(f"s{s}"):
                pass
started = time.monotonic()
ok = handle.shutdown(timeout_millis=1000)
print(f"{ok} {time.monotonic() - started:.3f}")
"""


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("collector", ["refused", "blackhole"])
def test_shutdown_returns_in_time_with_the_collector_down(
    tmp_path: Path, protocol: str, collector: str
) -> None:
    """A real exporter against a closed port or a socket that never answers."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    port = hole.getsockname()[1]
    if collector == "blackhole":
        hole.listen(0)  # accepts the connection, never reads or answers
    else:
        hole.close()
    url = f"sqlite:///{tmp_path}/history.db"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    try:
        result = run_child(DOWN_CHILD.replace("sys.argv[1]", repr(url)), env, timeout=60)
    finally:
        hole.close()
    ok, shutdown_took = result.stdout.split()
    # a bound, not a speed: the SDK alone blocks 20-30 s here; the 1 s timeout must hold
    assert float(shutdown_took) < 1.0 + 2.0, result.stderr[-2000:]
    assert ok == "False"  # nothing was exported, and shutdown says so
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(workflow_history))
        assert count.scalar() == 100  # the history is complete regardless
    engine.dispose()


LINK_CHILD = """
import sys
from exporters import configure
from exporters.cli import main
from instrumentation import workflow_run
handle = configure(database_url={url!r}, logs=False)
with workflow_run("wf") as run, run.step("s"):
    print(run.trace_id, flush=True)
handle.shutdown(10_000)
sys.argv = ["flowtel", "show", run.run_id, "--db", {url!r}, "--json"]
main()
"""


def test_trace_url_template_reaches_the_row_and_flowtel_show(tmp_path: Path) -> None:
    """FLOWTEL_TRACE_URL_TEMPLATE, set only in the environment, gives the link end to end."""
    url = f"sqlite:///{tmp_path}/history.db"
    env = {"FLOWTEL_TRACE_URL_TEMPLATE": "http://jaeger:16686/trace/{trace_id}?span={span_id}"}
    trace_id, shown = run_child(LINK_CHILD.format(url=url), env).stdout.split("\n", 1)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        (row,) = connection.execute(sa.select(workflow_history))
    engine.dispose()
    link = f"http://jaeger:16686/trace/{trace_id}?span={row.span_id}"
    assert row.metadata["trace"]["url"] == link
    assert row.metadata["trace"]["traceparent"].startswith(f"00-{trace_id}-{row.span_id}-")
    assert link in shown
