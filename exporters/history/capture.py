"""Span → event, in two halves: a cheap capture on the application's thread, decoding later.

The processor's ``on_start``/``on_end`` call :func:`capture_start`/:func:`capture_end`, which
copy a handful of plain values into a tuple — never the span or any SDK object it holds:
queued SDK objects would make the cyclic garbage collector walk them on the caller's thread. A
step's start and end read their few fixed keys; a run's start copies its attribute dict (once
per run) and its end references it, since an ended span's attributes no longer change. The
writer thread turns the tuples into typed events with :func:`decode`. Spans without
``workflow.run_id`` are not workflow spans and are not captured.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from exporters.sdk_internals import end_fields, start_fields
from instrumentation import attributes as attr

__all__ = [
    "ErrorInfo",
    "Event",
    "RunEnd",
    "RunStart",
    "StepEnd",
    "StepStart",
    "capture_end",
    "capture_start",
    "decode",
    "drop_superseded_starts",
    "ends_run",
    "ends_step",
    "is_run_event",
    "run_id_of",
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
    logs: tuple[dict[str, Any], ...] | None = None
    input: Any = None
    """``workflow.step.input`` as the sender set it (JSON text from flowtel's API)."""
    output: Any = None
    """``workflow.step.output`` as the sender set it."""


Event = RunStart | RunEnd | StepStart | StepEnd


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


_RUN_START, _STEP_START, _RUN_END, _STEP_END = 0, 1, 2, 3
_RUN_ID, _STEP_NAME = attr.RUN_ID, attr.STEP_NAME
_STEP_INDEX, _STEP_ATTEMPT = attr.STEP_INDEX, attr.STEP_ATTEMPT
_STEP_STATUS, _STEP_MESSAGE = attr.STEP_STATUS, attr.STEP_MESSAGE
_STEP_INPUT, _STEP_OUTPUT = attr.STEP_INPUT, attr.STEP_OUTPUT
_START_SPAN_ID, _END_SPAN_ID = 5, 7  # where a step start's / step end's tuple holds its span id


def capture_start(span: Any) -> tuple[Any, ...] | None:
    """On the application's thread: the fields of a started workflow or step span."""
    attributes, context, start = start_fields(span)
    run_id = attributes.get(_RUN_ID)
    if run_id is None:
        return None
    step_name = attributes.get(_STEP_NAME)
    if step_name is None:
        flags = int(context.trace_flags)
        return (_RUN_START, dict(attributes), context.trace_id, context.span_id, flags, start)
    return (
        _STEP_START,
        run_id,
        step_name,
        attributes.get(_STEP_INDEX),
        attributes.get(_STEP_ATTEMPT),
        context.span_id,
        start,
    )


def capture_end(span: Any) -> tuple[Any, ...] | None:
    """On the application's thread: the fields of an ended workflow or step span.

    Only plain values are copied out: the ids and flags of the span context, the step's few
    attributes (a run's whole attribute dict, which no longer changes once the span ended), a
    run's status description, and the events only when there are any. A tuple of plain values
    is untracked by the garbage collector at its first pass; referencing the SDK's
    ``SpanContext``, ``Status`` and events list instead kept five collected objects alive per
    queued span, and with tens of thousands of spans queued behind a busy application the
    collector's full passes over them cost a fifth of the application's time.
    """
    attributes, context, events, start, end, status = end_fields(span)
    if _RUN_ID not in attributes:
        return None
    events = tuple(events) if events else None
    get = attributes.get
    if _STEP_NAME in attributes:
        return (
            _STEP_END,
            get(_RUN_ID),
            get(_STEP_NAME),
            get(_STEP_INDEX),
            get(_STEP_ATTEMPT),
            get(_STEP_STATUS),
            get(_STEP_MESSAGE),
            context.span_id,
            start,
            end,
            events,
            get(_STEP_INPUT),
            get(_STEP_OUTPUT),
        )
    return (
        _RUN_END,
        attributes,
        context.trace_id,
        context.span_id,
        int(context.trace_flags),
        start,
        end,
        None if status is None else status.description,
        events,
    )


def decode(raw: tuple[Any, ...]) -> Event:
    """On the writer's thread: turn a captured tuple into a typed event."""
    kind = raw[0]
    if kind == _STEP_START:
        _, run_id, name, index, attempt, span_id, start_ns = raw
        return StepStart(
            str(run_id), span_id, start_ns, str(name), _int(index, 0), _int(attempt, 1)
        )
    if kind == _RUN_START:
        _, attributes, trace_id, span_id, trace_flags, start_ns = raw
        run_id = str(attributes[attr.RUN_ID])
        return RunStart(run_id, trace_id, span_id, trace_flags, start_ns, attributes)
    if kind == _STEP_END:
        (_, run_id, name, index, attempt, status, message, span_id, start_ns, end_ns, events,
         given, returned) = raw  # fmt: skip
        start_ns = start_ns or 0
        return StepEnd(
            str(run_id),
            span_id,
            start_ns,
            max(end_ns or start_ns, start_ns),  # a stepped clock: never before the start
            str(name),
            _int(index, 0),
            _int(attempt, 1),
            attr.StepStatus.COMPLETED.value if status is None else str(status),
            _str(message),
            _error(events) if events else None,
            _logs(events) if events else None,
            given,
            returned,
        )
    _, attributes, trace_id, span_id, trace_flags, start_ns, end_ns, description, events = raw
    start_ns = start_ns or 0
    return RunEnd(
        str(attributes[attr.RUN_ID]),
        trace_id,
        span_id,
        trace_flags,
        start_ns,
        max(end_ns or start_ns, start_ns),
        dict(attributes),
        description,
        _error(events) if events else None,
    )


def drop_superseded_starts(raws: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """*raws* without the starts of steps whose end is in *raws* too.

    A step's end carries everything its start did (name, position, attempt, start time) and
    replaces the start's row, so folding both only costs the writer time: on a busy writer
    nearly every step starts and ends within one batch.
    """
    ended = {raw[_END_SPAN_ID] for raw in raws if raw[0] == _STEP_END}
    if not ended:
        return raws
    return [raw for raw in raws if raw[0] != _STEP_START or raw[_START_SPAN_ID] not in ended]


def ends_run(raw: tuple[Any, ...]) -> bool:
    """Whether a captured tuple is a run's end (a full queue never drops one)."""
    return bool(raw[0] == _RUN_END)


def is_run_event(raw: tuple[Any, ...]) -> bool:
    """Whether a captured tuple is a run's start or end."""
    return bool(raw[0] == _RUN_START or raw[0] == _RUN_END)


def ends_step(raw: tuple[Any, ...]) -> bool:
    """Whether a captured tuple is a step's end."""
    return bool(raw[0] == _STEP_END)


def run_id_of(raw: tuple[Any, ...]) -> str:
    """The run id of a captured tuple (a run's own tuples hold it in their attribute dict)."""
    value = raw[1].get(_RUN_ID) if raw[0] in (_RUN_START, _RUN_END) else raw[1]
    return str(value)


def _error(events: tuple[Any, ...]) -> ErrorInfo | None:
    for event in reversed(events):
        if event.name == "exception":
            a = event.attributes or {}
            return ErrorInfo(
                _str(a.get("exception.type")),
                _str(a.get("exception.message")),
                _str(a.get("exception.stacktrace")),
            )
    return None


def _logs(events: tuple[Any, ...]) -> tuple[dict[str, Any], ...] | None:
    lines = []
    for event in events:
        if event.name == attr.LOG_EVENT:
            a = event.attributes or {}
            lines.append(
                {
                    "at_ns": event.timestamp,
                    "severity": _str(a.get(attr.LOG_SEVERITY)),
                    "logger": _str(a.get(attr.LOG_LOGGER)),
                    "message": _str(a.get(attr.LOG_MESSAGE)),
                }
            )
    return tuple(lines) or None
