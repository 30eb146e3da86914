"""Collector mode on the worker counts what its span export loses, from the exporter's side.

In ``configure(history="collector")`` the history *is* the span export: a span the SDK's
``BatchSpanProcessor`` evicts from its full queue, ignores after shutdown, or hands to an
exporter that fails is a history row that never reaches ``flowtel ingest``. The SDK only logs
these; :class:`~exporters.telemetry.export.CountedSpanExport` counts them and
:class:`~exporters.telemetry.forward.HistoryForwarder`'s ``stats`` reports the workflow spans
among them (``events_dropped``, ``export_failed``). The queue test blocks the exporter (a slow
collector) so the queue overflows; the failure test runs a real worker process against a port
where nothing listens (ingest down, no collector in between).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters.telemetry.export import CountedSpanExport
from exporters.telemetry.forward import HistoryForwarder
from exporters.telemetry.metrics import LOST, observe_writer
from instrumentation import attributes as attr
from instrumentation import workflow_run

ROOT = Path(__file__).resolve().parent.parent


class _SlowCollector(InMemorySpanExporter):
    """Keeps every span it is sent, but its first export waits until :attr:`gate` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(30)
        return super().export(spans)


Worker = tuple[TracerProvider, HistoryForwarder, CountedSpanExport, _SlowCollector]


@pytest.fixture
def slow_worker() -> Iterator[Worker]:
    """A tracer provider whose span export has a 4-span queue and a slow collector behind it."""
    collector = _SlowCollector()
    export = CountedSpanExport(
        collector, max_queue_size=4, max_export_batch_size=1, schedule_delay_millis=10
    )
    provider = TracerProvider(shutdown_on_exit=False)
    forwarder = HistoryForwarder(export)
    provider.add_span_processor(forwarder)
    provider.add_span_processor(export)
    try:
        yield provider, forwarder, export, collector
    finally:
        collector.gate.set()
        provider.shutdown()


def test_spans_evicted_from_a_full_export_queue_are_counted_as_events_dropped(
    slow_worker: Worker,
) -> None:
    provider, forwarder, export, collector = slow_worker
    runs = 50
    for n in range(runs):
        with workflow_run("provision_server", context={"n": n}, tracer_provider=provider):
            pass
    collector.gate.set()
    assert export.force_flush()
    sent = 2 * runs  # each run: its start signal and its span
    received = [s for s in collector.get_finished_spans() if attr.RUN_ID in (s.attributes or {})]
    lost = sent - len(received)
    assert lost > 0  # the 4-span queue overflowed while the collector was slow
    assert forwarder.stats["events_dropped"] == lost
    assert forwarder.stats["export_failed"] == 0
    assert forwarder.stats["queue_depth"] == 0
    assert export.counts()["spans_dropped"] == lost
    assert export.counts()["spans_exported"] == len(received)


def test_spans_ended_after_the_export_shut_down_are_counted_as_events_dropped(
    slow_worker: Worker,
) -> None:
    provider, forwarder, export, collector = slow_worker
    collector.gate.set()
    export.shutdown()
    with workflow_run("late", tracer_provider=provider):
        pass
    assert forwarder.stats["events_dropped"] == 2  # its start signal and its span
    assert collector.get_finished_spans() == ()


class _RefusingCollector(InMemorySpanExporter):
    """Answers every export with a failure, as an OTLP exporter does once its retries end."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.FAILURE


def test_refused_workflow_spans_reach_the_lost_metric_as_export_failed() -> None:
    export = CountedSpanExport(_RefusingCollector(), schedule_delay_millis=10)
    provider = TracerProvider(shutdown_on_exit=False)
    forwarder = HistoryForwarder(export)
    provider.add_span_processor(forwarder)
    provider.add_span_processor(export)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    try:
        observe_writer(meters.get_meter("test"), lambda: forwarder.stats)
        for _ in range(3):
            with workflow_run("provision_server", tracer_provider=provider):
                pass
        export.force_flush()
        data = reader.get_metrics_data()
        assert data is not None
        lost = {
            point.attributes["reason"]: point.value
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == LOST
            for point in metric.data.data_points
            if isinstance(point, NumberDataPoint) and point.attributes is not None
        }
    finally:
        provider.shutdown()
        meters.shutdown()
    assert lost["export_failed"] == 6  # per run: its start signal and its span
    assert lost["queue_full"] == 0


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_worker_whose_ingest_is_down_counts_every_workflow_span_as_export_failed() -> None:
    """No collector in between and nothing listening: every span is lost, and counted."""
    port = _closed_port()
    script = f"""
        import json
        from exporters import configure
        from instrumentation import workflow_run

        handle = configure(
            history="collector", otlp_endpoint="http://127.0.0.1:{port}",
            otlp_protocol="http/protobuf", otlp_timeout=0.5, metrics=False, logs=False,
        )
        for n in range(5):
            with workflow_run("provision_server", context={{"n": n}}) as run:
                with run.step("prepare"):
                    pass
        handle.shutdown(10_000)
        print(json.dumps(handle.processor.stats))
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["export_failed"] == 5 * 3  # per run: start signal, run span, step span
    assert stats["events_dropped"] == 0
    assert "no history processor" not in done.stderr
