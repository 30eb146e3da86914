"""OTLP protobuf spans → the SDK's ``ReadableSpan``, cleaned, as the history processor takes them.

The in-process path hands SDK spans to
:class:`~exporters.history.processor.WorkflowHistorySpanProcessor`'s ``on_start``/``on_end``;
ingest does the same with spans rebuilt from the wire, so the fold → writer → upsert path is one
and the same (this thin adapter is the only ingest-specific step). Only workflow spans (with
``workflow.run_id``) are kept; a start signal (:mod:`.wire`) becomes an ``on_start``, any other
workflow span an ``on_end``. Spans from elsewhere may carry secrets, so the redaction and size
limits the Python API applies at the source run here too: every string attribute, the status
description, exception and log events are cleaned (``instrumentation.clean``: redacted, NUL-free,
cut to the limits), context entries under secret-looking keys become ``[REDACTED]`` and
``workflow.context_json`` is re-serialised redacted and bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from exporters.ingest.wire import HISTORY_ONLY, SIGNAL, SIGNAL_START
from instrumentation import attributes as attr
from instrumentation.clean import clean_error_type, clean_json, clean_message, clean_stacktrace
from instrumentation.limits import get_limits
from instrumentation.redaction import get_redactor

__all__ = ["IncomingSpan", "any_value", "workflow_spans"]

_STACKTRACE = "exception.stacktrace"
_NO_RESOURCE = Resource({})
"""Given to every rebuilt span: without it the SDK runs its resource detectors per span
(a thread pool each time, ~2 ms); the history needs only ``service.name``, kept apart."""
_TEXT_EVENT_KEYS = ("exception.message", attr.LOG_MESSAGE)


@dataclass(frozen=True, slots=True)
class IncomingSpan:
    """One workflow span from the wire: its service, whether it is a start signal, the span."""

    service: str | None
    start: bool
    span: ReadableSpan


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value (bytes as hex text)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def _plain(items: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    item: KeyValue
    for item in items:
        found[item.key] = any_value(item.value)
    return found


def workflow_spans(request: ExportTraceServiceRequest) -> Iterator[IncomingSpan]:
    """The workflow spans of *request*, cleaned, in the order they were sent."""
    for resource_spans in request.resource_spans:
        resource = _plain(resource_spans.resource.attributes)
        service = resource.get("service.name")
        service = None if service is None else clean_message(service)[:255]
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                incoming = _incoming(span, service)
                if incoming is not None:
                    yield incoming


def _incoming(span: ProtoSpan, service: str | None) -> IncomingSpan | None:
    attributes = _plain(span.attributes)
    if attributes.get(attr.RUN_ID) in (None, ""):
        return None
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        return None  # not a valid span context: the specification's receivers drop it too
    start = attributes.pop(SIGNAL, None) == SIGNAL_START
    history_only = attributes.pop(HISTORY_ONLY, False) is True
    attributes = _clean_attributes(attributes)
    trace_id = int.from_bytes(span.trace_id, "big")
    # OTLP's span flags carry the W3C trace flags in their low byte (senders such as Python's
    # leave them 0: sampled, since they exported the span); a history-only copy was not sampled.
    raw_flags = (span.flags & 0xFF) or TraceFlags.SAMPLED
    flags = TraceFlags(raw_flags & ~TraceFlags.SAMPLED if history_only else raw_flags)
    context = SpanContext(trace_id, int.from_bytes(span.span_id, "big"), False, flags)
    parent = None
    if len(span.parent_span_id) == 8:
        parent = SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"), True, flags)
    start_ns = span.start_time_unix_nano or None
    end_ns = span.end_time_unix_nano or start_ns
    readable = ReadableSpan(
        name=clean_message(span.name),
        context=context,
        resource=_NO_RESOURCE,
        parent=parent,
        attributes=attributes,
        events=[_event(e) for e in span.events],
        status=_status(span.status),
        start_time=start_ns,
        end_time=start_ns if start else end_ns,
    )
    return IncomingSpan(service, start, readable)


def _clean_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    redactor = get_redactor()
    clean: dict[str, Any] = {}
    for key, value in attributes.items():
        if key == attr.RUN_CONTEXT_JSON:
            clean[key] = _clean_context_json(value)
        elif key.startswith(attr.CONTEXT_PREFIX):
            short = key[len(attr.CONTEXT_PREFIX) :]
            masked = redactor.redact({short: value}).get(short)
            clean[key] = clean_message(masked) if isinstance(masked, str) else masked
        elif key == attr.ERROR_TYPE:
            clean[key] = clean_error_type(value)
        elif isinstance(value, str):
            clean[key] = clean_message(value)
        elif isinstance(value, list):
            clean[key] = [clean_message(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, dict):
            clean[key] = clean_json(value, get_limits().context_bytes)[1]
        else:
            clean[key] = value
    return clean


def _clean_context_json(value: Any) -> str:
    try:
        data = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        data = {"context": value}
    return clean_json(data, get_limits().context_bytes)[1]


def _event(event: ProtoSpan.Event) -> Event:
    attributes = _plain(event.attributes)
    for key in _TEXT_EVENT_KEYS:
        if key in attributes:
            attributes[key] = clean_message(attributes[key])
    if _STACKTRACE in attributes:
        attributes[_STACKTRACE] = clean_stacktrace(attributes[_STACKTRACE])
    if "exception.type" in attributes:
        attributes["exception.type"] = clean_error_type(attributes["exception.type"])
    return Event(clean_message(event.name), attributes, event.time_unix_nano or None)


def _status(status: ProtoStatus) -> Status:
    if status.code == ProtoStatus.STATUS_CODE_ERROR:
        return Status(StatusCode.ERROR, clean_message(status.message) if status.message else None)
    if status.code == ProtoStatus.STATUS_CODE_OK:
        return Status(StatusCode.OK)
    return Status(StatusCode.UNSET)
