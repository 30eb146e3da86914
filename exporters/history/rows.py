"""Folding events into rows: each run's current state, its snapshot row and step rows.

The writer thread owns these objects; nothing here is shared with the application's thread.
A :class:`RunState` absorbs the events of one run in order and renders the full
``workflow_history`` row on demand, including the ``metadata`` JSON in the old system's shape
(every declared step with status, times, attempts and error; the context; timestamps; errors;
trace ids). Each rendered snapshot takes a new ``seq``: larger than the last and at least the
current time in microseconds, so snapshots from a resumed run in another process order after
those written before.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from opentelemetry import trace

from exporters.db.heartbeat import HOST
from exporters.db.timestamps import iso_text, to_datetime
from exporters.history.capture import ErrorInfo, RunEnd, RunStart, StepEnd, StepStart
from exporters.history.sanitize import clean_run_row, clean_step_row
from exporters.history.tracelink import trace_url
from instrumentation import attributes as attr
from instrumentation._spans import traceparent_of
from instrumentation.attributes import RunStatus, StepStatus
from instrumentation.clean import clean_json
from instrumentation.limits import get_limits, truncation_marker

__all__ = ["RunState", "StepSummary", "step_row"]

_FINAL_STEP = frozenset({StepStatus.COMPLETED.value, StepStatus.SKIPPED.value})
_RUNNING = StepStatus.RUNNING.value  # enum ``.value`` is a Python-level property: read it once


class StepSummary:
    """What the run's metadata says about one declared step (all its attempts)."""

    __slots__ = (
        "_json",
        "attempts",
        "completed_ns",
        "error",
        "index",
        "name",
        "started_ns",
        "status",
    )

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        self.status = "pending"
        self.attempts = 0
        self.started_ns: int | None = None
        self.completed_ns: int | None = None
        self.error: str | None = None
        self._json: dict[str, Any] | None = None

    def changed(self) -> None:
        """Forget the cached :meth:`as_json` (call after changing any field)."""
        self._json = None

    def as_json(self) -> dict[str, Any]:
        """The step's entry in ``metadata.steps`` (cached until :meth:`changed`)."""
        value = self._json
        if value is None:
            value = self._json = {
                "index": self.index,
                "name": self.name,
                "status": self.status,
                "attempts": self.attempts,
                "started_at": iso_text(self.started_ns),
                "completed_at": iso_text(self.completed_ns),
                "error": self.error,
            }
        return value


class RunState:
    """The writer's view of one run, folded from its events."""

    def __init__(self, run_id: str, service_name: str | None, trace_url_template: str | None):
        self.run_id = run_id
        self.service_name = service_name
        self.trace_url_template = trace_url_template
        self.known = False  # True once the run span's start or end was seen
        self.attributes: dict[str, Any] = {}
        self.trace_id = 0
        self.span_id = 0
        self.trace_flags = 0
        self.start_ns = 0
        self.end_ns: int | None = None
        self.status = RunStatus.RUNNING.value
        self.error_message: str | None = None
        self.error_type: str | None = None
        self.steps: dict[int, StepSummary] = {}
        self.current: StepSummary | None = None
        self.errors: list[dict[str, Any]] = []
        self.seq = 0
        self.pid = os.getpid()
        self.rejected: list[str] = []
        """Values left out of the row since the writer last looked (``name=value``)."""
        self._rejected_names: set[str] = set()  # each counted once per run

    # -- folding --------------------------------------------------------------------------
    def apply(self, event: RunStart | RunEnd | StepStart | StepEnd) -> None:
        """Fold one event into the state."""
        if isinstance(event, StepStart):
            summary = self._summary(event.step_index, event.name)
            summary.status = _RUNNING
            summary.attempts = max(summary.attempts, event.attempt)
            summary.started_ns = summary.started_ns or event.start_ns
            summary.changed()
            self.current = summary
        elif isinstance(event, StepEnd):
            self._apply_step_end(event)
        else:
            self._apply_run(event)

    def _apply_run(self, event: RunStart | RunEnd) -> None:
        self.known = True
        self.attributes = event.attributes
        self.trace_id, self.span_id = event.trace_id, event.span_id
        self.trace_flags = event.trace_flags
        self.start_ns = event.start_ns
        declared = event.attributes.get(attr.RUN_DECLARED_STEPS) or ()
        if isinstance(declared, (list, tuple)):
            for position, name in enumerate(declared, start=1):
                self._summary(position, str(name))
        else:  # any sender can emit a scalar: the row goes without the declared steps
            self._reject(attr.RUN_DECLARED_STEPS, f"{attr.RUN_DECLARED_STEPS}={declared!r:.80}")
        if isinstance(event, RunEnd):
            self.end_ns = event.end_ns
            self.status = str(event.attributes.get(attr.RUN_STATUS, RunStatus.COMPLETED.value))
            if self.status != RunStatus.COMPLETED.value:
                self.error_message = event.status_description or (
                    event.error.message if event.error else None
                )
                self.error_type = _error_type(event.attributes, event.error)

    def _apply_step_end(self, event: StepEnd) -> None:
        summary = self._summary(event.step_index, event.name)
        summary.attempts = max(summary.attempts, event.attempt)
        summary.started_ns = summary.started_ns or event.start_ns
        summary.status = event.status
        if event.status in _FINAL_STEP:
            summary.completed_ns = event.end_ns
            summary.error = None
        else:
            summary.completed_ns = event.end_ns
            text = (event.error.message if event.error else None) or event.message
            summary.error = text
            self.errors.append(
                {
                    "step": event.name,
                    "attempt": event.attempt,
                    "type": event.error.type if event.error else None,
                    "message": text,
                    "at": iso_text(event.end_ns),
                }
            )
            del self.errors[:-50]
        summary.changed()
        self.current = summary

    def _summary(self, index: int, name: str) -> StepSummary:
        summary = self.steps.get(index)
        if summary is None or summary.name != name:
            summary = StepSummary(index, name)
            self.steps[index] = summary
        return summary

    # -- rendering ------------------------------------------------------------------------
    @property
    def is_final(self) -> bool:
        """Whether the run has ended (its row will not change any more)."""
        return self.end_ns is not None

    def next_seq(self) -> int:
        """Take the sequence number for a new snapshot."""
        self.seq = max(self.seq + 1, time.time_ns() // 1000)
        return self.seq

    def steps_completed(self) -> int:
        """Steps that ended completed or skipped (by index, retries counted once)."""
        reported = self.attributes.get(attr.RUN_STEPS_COMPLETED)
        if self.is_final and isinstance(reported, int):
            return reported
        return sum(1 for s in self.steps.values() if s.status in _FINAL_STEP)

    def row(self, context_keys: tuple[str, str]) -> dict[str, Any]:
        """Render the ``workflow_history`` row for the current state (takes a new ``seq``)."""
        a = self.attributes
        context = _context(a)
        name = str(a.get(attr.RUN_NAME, ""))
        total = a.get(attr.RUN_TOTAL_STEPS)
        current = self.current
        trace_id = trace.format_trace_id(self.trace_id)
        span_id = trace.format_span_id(self.span_id)
        traceparent = traceparent_of(
            trace.SpanContext(
                self.trace_id, self.span_id, False, trace.TraceFlags(self.trace_flags)
            )
        )
        now = time.time_ns()
        server_key, device_key = context_keys
        failed_step = next(
            (s.name for s in self.steps.values() if s.status == StepStatus.FAILED.value), None
        )
        current_name = (
            failed_step if self.status == RunStatus.FAILED.value and failed_step else None
        ) or (current.name if current else None)
        order, listed = sorted(self.steps), get_limits().metadata_steps
        metadata = {
            "workflow_name": name,
            "description": a.get(attr.RUN_DESCRIPTION),
            "current_step_name": current_name,
            "current_step_index": current.index if current else None,
            "steps": [self.steps[i].as_json() for i in order[:listed]],
            "context_data": context,
            "timestamps": {
                "started_at": iso_text(self.start_ns),
                "completed_at": iso_text(self.end_ns),
                "updated_at": iso_text(now),
            },
            "errors": list(self.errors),  # the database thread serialises it: not the live list
            "trace": {
                "trace_id": trace_id,
                "span_id": span_id,
                "traceparent": traceparent,
                "url": self._trace_url(trace_id, span_id),
            },
        }
        if len(order) > listed:
            metadata["steps_truncated"] = len(order) - listed
        values: dict[str, Any] = {
            "run_id": self.run_id,
            "workflow_id": str(a.get(attr.RUN_WORKFLOW_ID) or name or self.run_id),
            "workflow_name": name,
            "server_id": _text(context.get(server_key)),
            "device_type": _text(context.get(device_key)),
            "status": self.status,
            "started_at": to_datetime(self.start_ns),
            "completed_at": to_datetime(self.end_ns),
            "updated_at": to_datetime(now),
            "steps_completed": self.steps_completed(),
            "total_steps": total if isinstance(total, int) else len(self.steps),
            "current_step": current_name,
            "duration_ms": (self.end_ns - self.start_ns) // 1_000_000 if self.end_ns else None,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "metadata": metadata,
            "trace_id": trace_id,
            "span_id": span_id,
            "parent_run_id": _text(a.get(attr.RUN_PARENT_RUN_ID)),
            "service_name": self.service_name,
            "host": HOST,
            "pid": self.pid,
            "seq": self.next_seq(),
        }
        return clean_run_row(values)

    def _trace_url(self, trace_id: str, span_id: str) -> str | None:
        url = trace_url(self.trace_url_template, trace_id, span_id)
        if url is None and self.trace_url_template:
            self._reject("trace url", f"trace url (template {self.trace_url_template!r:.80})")
        return url

    def _reject(self, name: str, text: str) -> None:
        """Note a value left out of the row (once per run and value)."""
        if name not in self._rejected_names:
            self._rejected_names.add(name)
            self.rejected.append(text)


def _context(attributes: dict[str, Any]) -> dict[str, Any]:
    raw = attributes.get(attr.RUN_CONTEXT_JSON)
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
            if isinstance(value, dict):
                return value
        except ValueError:
            pass
    prefix = attr.CONTEXT_PREFIX
    return {k[len(prefix) :]: v for k, v in attributes.items() if k.startswith(prefix)}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)[:255]


def _error_type(attributes: dict[str, Any], error: ErrorInfo | None) -> str | None:
    value = attributes.get(attr.ERROR_TYPE)
    if value is not None:
        return str(value)
    return error.type if error else None


def step_row(event: StepStart | StepEnd) -> dict[str, Any]:
    """Render the ``workflow_step_history`` row for one step event."""
    error = event.error if isinstance(event, StepEnd) else None
    end_ns = event.end_ns if isinstance(event, StepEnd) else None
    values: dict[str, Any] = {
        "run_id": event.run_id,
        "span_id": trace.format_span_id(event.span_id),
        "step_index": event.step_index,
        "step_name": event.name,
        "attempt": event.attempt,
        "status": event.status if isinstance(event, StepEnd) else _RUNNING,
        "started_at": to_datetime(event.start_ns),
        "completed_at": to_datetime(end_ns),
        "duration_ms": (end_ns - event.start_ns) // 1_000_000 if end_ns else None,
        "message": event.message if isinstance(event, StepEnd) else None,
        "error_type": error.type if error else None,
        "error_message": error.message if error else None,
        "error_stacktrace": error.stacktrace if error else None,
        "logs": _log_lines(event.logs) if isinstance(event, StepEnd) and event.logs else None,
        "input": step_io(event.input) if isinstance(event, StepEnd) else None,
        "output": step_io(event.output) if isinstance(event, StepEnd) else None,
    }
    return clean_step_row(values)


def step_io(value: Any) -> Any:
    """A step's recorded input or output for its row: the JSON the span carries, parsed, then
    redacted and bounded again (a sender other than flowtel's API may have set anything);
    text that is not JSON is kept as a string."""
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError, RecursionError):  # else kept as the text it is
            value = json.loads(value)
    return clean_json(value, get_limits().io_bytes)[0]


def _log_lines(logs: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    """The newest ``Limits.log_lines`` lines; past it, the first says how many went."""
    keep = get_limits().log_lines
    dropped = max(0, len(logs) - keep)
    if dropped and keep:
        dropped += 1  # the marker takes one of the kept places
    lines = [
        {
            "at": iso_text(line["at_ns"]),
            "severity": line["severity"],
            "logger": line["logger"],
            "message": line["message"],
        }
        for line in logs[dropped:]
    ]
    if dropped and keep:
        marker = {"at": None, "severity": None, "logger": None}
        lines.insert(0, {**marker, "message": truncation_marker(dropped, "lines")})
    return lines
