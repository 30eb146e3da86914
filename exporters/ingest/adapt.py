"""OTLP protobuf spans → cleaned wire spans (:mod:`.wirespan`), as the history processor takes them.

The in-process path hands SDK spans to
:class:`~exporters.history.processor.WorkflowHistorySpanProcessor`'s ``on_start``/``on_end``;
ingest does the same with the plain fields decoded from the wire (no SDK span object is built:
:mod:`.wirespan` lays them out as capture reads them), so the capture → writer → upsert path is
one and the same (this thin adapter is the only ingest-specific step). Only workflow spans (with
``workflow.run_id``) are kept; a start signal (``attr.SIGNAL``) becomes an ``on_start``, any other
workflow span an ``on_end``. Spans from elsewhere may carry secrets, so the redaction and size
limits the Python API applies at the source run here too: every string attribute, the status
description, exception and log events are cleaned (``instrumentation.clean``: redacted, NUL-free,
cut to the limits), context entries under secret-looking keys become ``[REDACTED]`` and
``workflow.context_json`` is re-serialised redacted and bounded, with the per-key
``workflow.context.<key>`` entries merged into it (they win). Ingest trusts no sender: a run id
the in-process API would refuse (over 64 characters, blank, control characters, the reserved
``legacy-`` prefix) or a status word the contract does not define makes the whole request
:class:`InvalidSpan` (400, naming the attribute), never a cut or guessed value. Spans that
follow OpenTelemetry's CI/CD conventions become workflow spans first (:mod:`.cicd`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.trace import TraceFlags

from exporters.ingest import cicd
from exporters.ingest.decode import BadRequest
from exporters.ingest.wirespan import WireContext, WireEvent, WireSpan, WireStatus
from instrumentation import attributes as attr
from instrumentation._validation import check_run_id
from instrumentation.attributes import RunStatus, StepStatus
from instrumentation.clean import clean_error_type, clean_json, clean_message, clean_stacktrace
from instrumentation.limits import get_limits
from instrumentation.redaction import get_redactor

__all__ = ["IncomingSpan", "InvalidSpan", "any_value", "workflow_spans"]

_STACKTRACE = "exception.stacktrace"
_TEXT_EVENT_KEYS = ("exception.message", attr.LOG_MESSAGE)
_RUN_STATUSES = frozenset(status.value for status in RunStatus)
_STEP_STATUSES = frozenset(status.value for status in StepStatus)


class InvalidSpan(BadRequest):
    """A span the history must not take as sent (400 for its whole request)."""


class IncomingSpan(NamedTuple):
    """One workflow span from the wire: its service, whether it is a start signal, the span
    (as the processor's capture reads it), its run id and trace id, and whether it is a run's
    span (not a step's)."""

    service: str | None
    start: bool
    span: WireSpan
    run_id: str
    trace_id: int
    is_run: bool


class _Cleaner:
    """``clean_message`` remembered for the strings of one request: a request repeats its run
    ids, step names and status words on many spans, and cleaning (redaction patterns
    included) is a pure function of the text under the process-wide limits and redactor.
    The run ids already found valid in the request are remembered too."""

    __slots__ = ("_seen", "valid_run_ids")

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        self.valid_run_ids: set[str] = set()

    def __call__(self, value: Any) -> str:
        if type(value) is not str:
            return clean_message(value)
        found = self._seen.get(value)
        if found is None:
            found = self._seen[value] = clean_message(value)
        return found


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value (bytes as hex text)."""
    return _any_value(value, value.WhichOneof("value"))


def _any_value(value: AnyValue, kind: str | None) -> Any:
    if kind == "string_value":  # by far the most common: checked first
        return value.string_value
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
        value = item.value
        kind = value.WhichOneof("value")
        found[item.key] = value.string_value if kind == "string_value" else _any_value(value, kind)
    return found


def workflow_spans(request: ExportTraceServiceRequest) -> Iterator[IncomingSpan]:
    """The workflow spans of *request*, cleaned, in the order they were sent.

    Raises:
        InvalidSpan: a span has a run id or a status word the history refuses.
    """
    decoded: list[tuple[str | None, ProtoSpan, dict[str, Any]]] = []
    for resource_spans in request.resource_spans:
        resource = _plain(resource_spans.resource.attributes)
        service = resource.get("service.name")
        service = None if service is None else clean_message(service)[:255]
        for scope_spans in resource_spans.scope_spans:
            decoded.extend((service, span, _plain(span.attributes)) for span in scope_spans.spans)
    tasks = cicd.task_order(
        (span.trace_id, span.span_id, span.start_time_unix_nano)
        for _, span, attributes in decoded
        if cicd.TASK_NAME in attributes and attr.RUN_ID not in attributes
    )
    clean = _Cleaner()
    for service, span, attributes in decoded:
        incoming = _incoming(span, attributes, service, tasks, clean)
        if incoming is not None:
            yield incoming


def _incoming(
    span: ProtoSpan,
    attributes: dict[str, Any],
    service: str | None,
    tasks: dict[bytes, int],
    clean: _Cleaner,
) -> IncomingSpan | None:
    trace_bytes, span_bytes = span.trace_id, span.span_id
    if len(trace_bytes) != 16 or len(span_bytes) != 8:
        return None  # not a valid span context: the specification's receivers drop it too
    status = span.status
    if attr.RUN_ID not in attributes:  # maybe a CI/CD span (a flowtel span has a run id)
        try:
            failed = status.code == ProtoStatus.STATUS_CODE_ERROR
            mapped = cicd.workflow_attributes(
                attributes, trace_bytes, failed, tasks.get(span_bytes, 0)
            )
        except cicd.UnknownResult as exc:
            raise InvalidSpan(f"span {span_bytes.hex()}: {exc}") from None
        if mapped is not None:
            attributes.update(mapped)
    if attributes.get(attr.RUN_ID) is None:
        return None
    _validate(attributes, span_bytes, clean.valid_run_ids)
    start = attributes.pop(attr.SIGNAL, None) == attr.SIGNAL_START
    history_only = attributes.pop(attr.HISTORY_ONLY, False) is True
    attributes = _clean_attributes(attributes, clean)
    trace_id = int.from_bytes(trace_bytes, "big")
    # OTLP's span flags carry the W3C trace flags in their low byte (senders such as Python's
    # leave them 0: sampled, since they exported the span); a history-only copy was not sampled.
    raw_flags = (span.flags & 0xFF) or TraceFlags.SAMPLED
    flags = raw_flags & ~TraceFlags.SAMPLED if history_only else raw_flags
    start_ns = span.start_time_unix_nano or None
    end_ns = span.end_time_unix_nano or start_ns
    events = span.events
    wire = WireSpan(
        attributes,
        WireContext(trace_id, int.from_bytes(span_bytes, "big"), flags),
        start_ns,
        start_ns if start else end_ns,
        tuple(_event(e, clean) for e in events) if events else (),
        _status(status, clean),
    )
    run_id = str(attributes[attr.RUN_ID])
    return IncomingSpan(service, start, wire, run_id, trace_id, attr.STEP_NAME not in attributes)


def _validate(attributes: dict[str, Any], span_id: bytes, valid_run_ids: set[str]) -> None:
    """Refuse what the in-process API would refuse: the run id, the status words (a run id
    in *valid_run_ids* was checked already; one found valid is added)."""
    run_id = attributes[attr.RUN_ID]
    if type(run_id) is not str or run_id not in valid_run_ids:
        try:
            check_run_id(run_id)
        except (TypeError, ValueError) as exc:
            raise InvalidSpan(f"span {span_id.hex()}: {attr.RUN_ID}: {exc}") from None
        if type(run_id) is str:
            valid_run_ids.add(run_id)
    if attr.STEP_NAME in attributes:
        key, allowed = attr.STEP_STATUS, _STEP_STATUSES
    else:
        key, allowed = attr.RUN_STATUS, _RUN_STATUSES
    if key in attributes and attributes[key] not in allowed:
        raise InvalidSpan(
            f"span {span_id.hex()}: {key}={str(attributes[key])[:40]!r} is not a status flowtel "
            f"knows; send one of {', '.join(sorted(allowed))} (or leave it out)"
        )


def _clean_attributes(attributes: dict[str, Any], clean_text: _Cleaner) -> dict[str, Any]:
    if attr.RUN_CONTEXT_JSON in attributes:
        attributes = _merge_context(attributes)
    clean: dict[str, Any] = {}
    for key, value in attributes.items():
        if key.startswith(_SPECIAL_PREFIXES):
            clean[key] = _clean_special(key, value, clean_text)
        elif type(value) is str:
            clean[key] = clean_text(value)
        elif isinstance(value, list):
            clean[key] = [clean_text(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, dict):
            clean[key] = clean_json(value, get_limits().context_bytes)[1]
        elif isinstance(value, str):
            clean[key] = clean_text(value)
        else:
            clean[key] = value
    return clean


_SPECIAL_PREFIXES = (attr.RUN_CONTEXT_JSON, attr.CONTEXT_PREFIX, attr.ERROR_TYPE)
"""Keys cleaned their own way (the plain strings, lists and dicts of the rest are not)."""


def _clean_special(key: str, value: Any, clean_text: _Cleaner) -> Any:
    if key == attr.RUN_CONTEXT_JSON:
        return _clean_context_json(value)
    if key.startswith(attr.CONTEXT_PREFIX):
        short = key[len(attr.CONTEXT_PREFIX) :]
        masked = get_redactor().redact({short: value}).get(short)
        return clean_text(masked) if isinstance(masked, str) else masked
    if key == attr.ERROR_TYPE:
        return clean_error_type(value)
    # a key that only begins like one of them: cleaned as any other
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean_text(v) if isinstance(v, str) else v for v in value]
    if isinstance(value, dict):
        return clean_json(value, get_limits().context_bytes)[1]
    return value


def _merge_context(attributes: dict[str, Any]) -> dict[str, Any]:
    """``workflow.context_json`` with every ``workflow.context.<key>`` entry merged in (the
    per-key attribute wins): the row reads its context from the JSON alone."""
    prefix = attr.CONTEXT_PREFIX
    per_key = {k[len(prefix) :]: v for k, v in attributes.items() if k.startswith(prefix)}
    if not per_key:
        return attributes
    raw = attributes[attr.RUN_CONTEXT_JSON]
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        data = {"context": raw}
    if not isinstance(data, dict):
        data = {"context": data}
    return {**attributes, attr.RUN_CONTEXT_JSON: {**data, **per_key}}  # serialised when cleaned


def _clean_context_json(value: Any) -> str:
    try:
        data = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        data = {"context": value}
    return clean_json(data, get_limits().context_bytes)[1]


def _event(event: ProtoSpan.Event, clean: _Cleaner) -> WireEvent:
    attributes = _plain(event.attributes)
    for key in _TEXT_EVENT_KEYS:
        if key in attributes:
            attributes[key] = clean(attributes[key])
    if _STACKTRACE in attributes:
        attributes[_STACKTRACE] = clean_stacktrace(attributes[_STACKTRACE])
    if "exception.type" in attributes:
        attributes["exception.type"] = clean_error_type(attributes["exception.type"])
    # a missing time is the time received, as the SDK's Event takes it
    return WireEvent(clean(event.name), attributes, event.time_unix_nano or time.time_ns())


_NO_DESCRIPTION = WireStatus(None)


def _status(status: ProtoStatus, clean: _Cleaner) -> WireStatus:
    if status.code == ProtoStatus.STATUS_CODE_ERROR and status.message:
        return WireStatus(clean(status.message))
    return _NO_DESCRIPTION  # OK and UNSET carry no description
