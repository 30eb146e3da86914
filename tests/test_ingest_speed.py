"""Ingest's fast path: wire spans captured as SDK spans are, several requests in flight.

Ingest decodes OTLP straight into :class:`~exporters.ingest.wirespan.WireSpan` (no SDK span in
between) and hands it to the processor's ``on_start``/``on_end``, whose capture reads the SDK's
private fields. Here the spans of real runs (steps that succeed, fail with an exception and
log a line; runs that complete and fail) are captured both ways — from the SDK's ended spans,
and from the wire spans ingest decodes from those spans' OTLP encoding — and the decoded
events compared field by field. Several requests in flight at once (as a collector with
several queue consumers sends them) are each answered 200 only once that request's own rows
are in the table, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters.history.capture import capture_end, capture_start, decode
from exporters.ingest.adapt import workflow_spans
from exporters.ingest.server import IngestServer
from exporters.ingest.sink import IngestSink
from instrumentation import attributes as attr
from instrumentation import workflow_run
from tests.test_ingest import otlp_json, post
from tests.test_ingest_trust import run_span, step_span


def ended_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "wire"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with workflow_run("ok", context={"server_id": "s1"}, tracer_provider=provider) as run:
        with run.step("fetch") as step:
            step.span.add_event(
                attr.LOG_EVENT,
                {attr.LOG_MESSAGE: "fetched 3", attr.LOG_SEVERITY: "INFO", attr.LOG_LOGGER: "t"},
            )
        with run.step("store"):
            pass
    with (
        pytest.raises(RuntimeError),
        workflow_run("bad", tracer_provider=provider) as run,
        run.step("explode"),
    ):
        raise RuntimeError("disk on fire")
    provider.shutdown()
    return list(exporter.get_finished_spans())


def comparable(event: Any) -> Any:
    """*event* with only the sampled bit of its trace flags: Python's OTLP exporter does not
    send the W3C flags (ingest knows "sampled", not the random-trace-id bit)."""
    if hasattr(event, "trace_flags"):
        return event._replace(trace_flags=event.trace_flags & 0x01)
    return event


def test_wire_spans_capture_the_same_start_and_end_events_as_the_sdk_spans() -> None:
    spans = ended_spans()
    wire = list(workflow_spans(encode_spans(spans)))
    assert len(wire) == len(spans) == 5
    for sdk, incoming in zip(spans, wire, strict=True):
        assert not incoming.start
        assert incoming.is_run == (attr.STEP_NAME not in (sdk.attributes or {}))
        assert incoming.run_id == (sdk.attributes or {})[attr.RUN_ID]
        assert incoming.trace_id == sdk.get_span_context().trace_id  # type: ignore[union-attr]
        for capture in (capture_start, capture_end):
            expected: Any = capture(sdk)
            got: Any = capture(incoming.span)
            assert expected is not None and got is not None
            assert comparable(decode(got)) == comparable(decode(expected)), capture.__name__
    with_events: list[Any] = [decode(capture_end(i.span) or ()) for i in wire if i.span.events]
    errors = [e.error.message for e in with_events if e.error is not None]
    assert errors == ["disk on fire", "disk on fire"]  # the step's and its run's
    logs = [line["message"] for e in with_events for line in getattr(e, "logs", None) or ()]
    assert logs == ["fetched 3"]


@pytest.fixture
def ingest(db_url: str, tmp_path: Path) -> Iterator[tuple[IngestServer, IngestSink]]:
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "ingest-spool"})
    server = IngestServer(sink, "127.0.0.1:0").start()
    try:
        yield server, sink
    finally:
        server.shutdown()
        sink.close()


def test_each_of_several_requests_in_flight_is_answered_200_only_once_its_rows_are_committed(
    ingest: tuple[IngestServer, IngestSink], db_url: str
) -> None:
    """Four senders post 5 requests each, every request a run of 300 steps; the moment a 200
    arrives, the sender reads that run's row and step rows from the database itself."""
    server, sink = ingest
    engine = sa.create_engine(db_url)
    seen: dict[str, tuple[int, int, int]] = {}
    failures: list[BaseException] = []

    def sender(n: int) -> None:
        try:
            for k in range(5):
                run_id = f"flight-{n}-{k}"
                trace = f"{n + 1:016x}{k + 1:016x}"
                spans = [step_span(run_id, i, trace=trace) for i in range(1, 301)]
                spans.append(run_span(run_id, trace=trace))
                status, _, _ = post(server.url, otlp_json("flight", spans))
                with engine.connect() as connection:
                    steps = connection.scalar(
                        sa.text("SELECT COUNT(*) FROM workflow_step_history WHERE run_id = :r"),
                        {"r": run_id},
                    )
                    runs = connection.scalar(
                        sa.text("SELECT COUNT(*) FROM workflow_history WHERE run_id = :r"),
                        {"r": run_id},
                    )
                seen[run_id] = (status, int(runs or 0), int(steps or 0))
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    try:
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    finally:
        engine.dispose()
    assert not failures, failures
    assert len(seen) == 20
    assert {run: answer for run, answer in seen.items() if answer != (200, 1, 300)} == {}
    assert sink.stats.committed_requests == 20 and sink.stats.uncommitted_requests == 0
