"""Span → event: the few scalar fields the writer needs, copied on the application's thread.

The processor's ``on_start``/``on_end`` call these functions and queue the resulting tuples.
They hold only strings, numbers and (for a run's start) a small dict of attributes, never the
span itself: queued span objects would make the cyclic garbage collector walk them on the
caller's thread, and tuples of scalars are cheap to keep. Spans that do not carry
``workflow.run_id`` are not workflow spans and yield ``None``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from instrumentation import attributes as attr

__all__ = [
    "ErrorInfo",
    "RunEnd",
    "RunStart",
    "StepEnd",
    "StepStart",
    "run_or_step_end",
    "run_or_step_start",
]


class ErrorInfo(NamedTuple):
    """The recorded exception of a failed span, if any."""

    type: str | None
    message: str | None
    stacktrace: str | None


class RunStart(NamedTuple):
    """A workflow span started."""

    run_id: str
    trace_id: int
    span_id: int
    trace_flags: int
    start_ns: int
    attributes: dict[str, Any]


class RunEnd(NamedTuple):
    """A workflow span ended (carries everything :class:`RunStart` did, in case it was missed)."""

    run_id: str
    trace_id: int
    span_id: int
    trace_flags: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_description: str | None
    error: ErrorInfo | None


class StepStart(NamedTuple):
    """A step span started."""

    run_id: str
    span_id: int
    start_ns: int
    name: str
    step_index: int
    attempt: int


class StepEnd(NamedTuple):
    """A step span ended."""

    run_id: str
    span_id: int
    start_ns: int
    end_ns: int
    name: str
    step_index: int
    attempt: int
    status: str
    message: str | None
    error: ErrorInfo | None


Event = RunStart | RunEnd | StepStart | StepEnd


def _error(span: Any) -> ErrorInfo | None:
    for event in reversed(span.events):
        if event.name == "exception":
            a = event.attributes or {}
            return ErrorInfo(
                _str(a.get("exception.type")),
                _str(a.get("exception.message")),
                _str(a.get("exception.stacktrace")),
            )
    return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


def _attributes(span: Any) -> Any:
    """The span's attributes as a plain mapping, read without the public property's copies.

    ``span.attributes`` wraps the SDK's ``BoundedAttributes`` in a ``MappingProxyType`` whose
    every ``get`` runs two Python-level calls; on the application's thread that adds up. The
    SDK's private ``_attributes._dict`` is read when present, the public property otherwise.
    """
    bounded = getattr(span, "_attributes", None)
    plain = getattr(bounded, "_dict", None)
    if isinstance(plain, dict):
        return plain
    return span.attributes or {}


def run_or_step_start(span: Any) -> Event | None:
    """Return the start event for a workflow or step *span*, ``None`` for other spans."""
    attributes = _attributes(span)
    run_id = attributes.get(attr.RUN_ID)
    if run_id is None:
        return None
    context = span.context
    step_name = attributes.get(attr.STEP_NAME)
    if step_name is None:
        return RunStart(
            str(run_id),
            context.trace_id,
            context.span_id,
            int(context.trace_flags),
            span.start_time,
            dict(attributes),
        )
    return StepStart(
        str(run_id),
        context.span_id,
        span.start_time,
        str(step_name),
        _int(attributes.get(attr.STEP_INDEX), 0),
        _int(attributes.get(attr.STEP_ATTEMPT), 1),
    )


def run_or_step_end(span: Any) -> Event | None:
    """Return the end event for a workflow or step *span*, ``None`` for other spans."""
    attributes = _attributes(span)
    run_id = attributes.get(attr.RUN_ID)
    if run_id is None:
        return None
    context = span.context
    start_ns = span.start_time or 0
    end_ns = span.end_time or start_ns
    step_name = attributes.get(attr.STEP_NAME)
    events = getattr(span, "_events", None)
    error = _error(span) if (events if events is not None else span.events) else None
    if step_name is None:
        return RunEnd(
            str(run_id),
            context.trace_id,
            context.span_id,
            int(context.trace_flags),
            start_ns,
            end_ns,
            dict(attributes),
            span.status.description,
            error,
        )
    return StepEnd(
        str(run_id),
        context.span_id,
        start_ns,
        end_ns,
        str(step_name),
        _int(attributes.get(attr.STEP_INDEX), 0),
        _int(attributes.get(attr.STEP_ATTEMPT), 1),
        str(attributes.get(attr.STEP_STATUS, "completed")),
        _str(attributes.get(attr.STEP_MESSAGE)),
        error,
    )
