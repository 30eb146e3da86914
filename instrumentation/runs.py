"""The context-manager API: ``workflow_run(...)`` and ``run.step(...)``, sync and async.

A run is a span named after the workflow; each step attempt is a child span named after the
step. Both carry ``workflow.run_id`` from creation. Leaving a step or a run with an exception
records it, sets ERROR status and ``error.type``, and re-raises the very same exception object;
cancellation (``asyncio.CancelledError``, ``KeyboardInterrupt``, ``SystemExit``) marks the run
``cancelled``. Nothing here does I/O: the spans are turned into rows by the exporters' span
processor on its own thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import attributes as attr
from ._clock import SpanClock
from ._ids import new_run_id
from ._spans import (
    AsyncScope,
    context_attributes,
    error_description,
    get_tracer,
    is_cancellation,
    record_error,
    traceparent_of,
)
from ._validation import (
    check_name,
    check_names,
    check_optional_text,
    check_run_id,
    check_step_position,
    check_total_steps,
)
from .attributes import RunStatus, StepStatus
from .clean import clean_error_type, clean_message
from .recording import warn_if_nothing_records
from .steps import StepRun, StepScope

__all__ = ["RunScope", "WorkflowRun", "current_run", "workflow_run"]

_TP_SHAPE = "00-<32 hex trace id>-<16 hex span id>-<2 hex flags> (WorkflowRun.traceparent)"
_current_run: contextvars.ContextVar[WorkflowRun | None] = contextvars.ContextVar(
    "flowtel_current_run", default=None
)


def current_run() -> WorkflowRun | None:
    """Return the run whose ``with`` block the caller is in, or ``None``."""
    return _current_run.get()


class WorkflowRun:
    """Handle of one running workflow: open steps with :meth:`step`, read ids, mark failure.

    Not created directly: ``workflow_run(...)`` yields it.
    """

    def __init__(
        self,
        name: str,
        workflow_id: str,
        run_id: str,
        span: Span,
        context: dict[str, Any],
        tracer: trace.Tracer,
    ) -> None:
        self.name = name
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.span = span
        self.context = context
        self.status = RunStatus.RUNNING
        self.steps_completed = 0
        self.failed_step: str | None = None
        self._tracer = tracer
        self._failure: tuple[str, str | None] | None = None
        self._next_index = 1
        self._last: tuple[str, int, int] | None = None  # name, index, attempt of the last step
        self._done_indexes: set[int] = set()
        self.parent_context = trace.set_span_in_context(span)
        """The OpenTelemetry context whose current span is the run's: steps' parent."""

    @property
    def trace_id(self) -> str:
        """The run's trace id as 32 hex digits."""
        return trace.format_trace_id(self.span.get_span_context().trace_id)

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` of the run's span, to resume the run elsewhere."""
        return traceparent_of(self.span.get_span_context())

    def step(
        self,
        name: str,
        *,
        description: str | None = None,
        index: int | None = None,
        attempt: int | None = None,
    ) -> StepScope:
        """Return a context manager (``with`` or ``async with``) for one step attempt.

        Args:
            name: the step's name (low-cardinality: it becomes the span name).
            description: what the step does.
            index: the step's 1-based position; by default the next position, or the same one
                when the previous step had the same name and did not complete (a retry).
            attempt: the 1-based attempt number; by default counted the same way.
        """
        check_name(name, "step name")
        check_optional_text(description, "description")
        check_step_position(index, attempt)
        if index is None or attempt is None:
            auto_index, auto_attempt = self._position(name)
            index = auto_index if index is None else index
            attempt = auto_attempt if attempt is None else attempt
        self._last = (name, index, attempt)
        self._next_index = max(self._next_index, index + 1)
        return StepScope(self, self._tracer, name, index, attempt, description)

    def _position(self, name: str) -> tuple[int, int]:
        last = self._last
        if last is not None and last[0] == name and last[1] not in self._done_indexes:
            return last[1], last[2] + 1
        return self._next_index, 1

    def set_context(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Add entries to the run's context (redacted) after it has started."""
        merged = dict(self.context)
        merged.update(values or {})
        merged.update(more)
        self.context, attributes = context_attributes(merged)
        self.span.set_attributes(attributes)

    def fail(self, message: str, *, error_type: str | None = None) -> None:
        """Mark the run ``failed`` without raising (e.g. a step result said stop)."""
        self._failure = (clean_message(message), error_type and clean_error_type(error_type))

    def step_finished(self, step: StepRun) -> None:
        """Count *step*'s outcome once it has ended (called by the step itself)."""
        if step.status in (StepStatus.COMPLETED, StepStatus.SKIPPED):
            if step.index not in self._done_indexes:
                self._done_indexes.add(step.index)
                self.steps_completed += 1
        elif step.status == StepStatus.FAILED:
            self.failed_step = step.name

    def _finish(self, exc: BaseException | None) -> None:
        span = self.span
        if exc is None and self._failure is None:
            self.status = RunStatus.COMPLETED
        elif exc is None:
            message, error_type = self._failure  # type: ignore[misc]
            self.status = RunStatus.FAILED
            if error_type:
                span.set_attribute(attr.ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, message))
        else:
            self.status = RunStatus.CANCELLED if is_cancellation(exc) else RunStatus.FAILED
            description = error_description(exc)
            if self.failed_step is not None:
                description = f"step '{self.failed_step}' failed: {description}"
            record_error(span, exc, description)
        span.set_attributes(
            {attr.RUN_STATUS: self.status.value, attr.RUN_STEPS_COMPLETED: self.steps_completed}
        )


class RunScope(AsyncScope[WorkflowRun]):
    """``with``/``async with`` scope of one run; see :func:`workflow_run`."""

    def __init__(
        self,
        name: str,
        workflow_id: str | None,
        run_id: str | None,
        context: Mapping[str, Any] | None,
        total_steps: int | None,
        description: str | None,
        declared_steps: tuple[str, ...] | None,
        tracer_provider: trace.TracerProvider | None,
        traceparent: str | None = None,
    ) -> None:
        check_name(name, "workflow name")
        self._workflow_id = check_name(workflow_id, "workflow_id") if workflow_id else name
        self._run_id = check_run_id(run_id) if run_id else new_run_id()
        if context is not None and not isinstance(context, Mapping):
            raise TypeError(f"context must be a mapping, not {type(context).__name__}")
        check_total_steps(total_steps)
        check_optional_text(description, "description")
        self._name = name
        self._context = context or {}
        self._total_steps = total_steps
        self._description = description
        self._declared_steps = declared_steps
        self._tracer_provider = tracer_provider
        self._parent = _remote_parent(traceparent) if traceparent is not None else None
        self._run: WorkflowRun | None = None
        self._tokens: tuple[object, contextvars.Token[WorkflowRun | None]] | None = None
        self._clock: SpanClock | None = None

    def __enter__(self) -> WorkflowRun:
        warn_if_nothing_records(self._name)
        tracer = get_tracer(self._tracer_provider)
        clean_context, attributes = context_attributes(self._context)
        attributes[attr.RUN_ID] = self._run_id
        attributes[attr.RUN_WORKFLOW_ID] = self._workflow_id
        attributes[attr.RUN_NAME] = self._name
        if self._description is not None:
            attributes[attr.RUN_DESCRIPTION] = clean_message(self._description)
        if self._total_steps is not None:
            attributes[attr.RUN_TOTAL_STEPS] = self._total_steps
        if self._declared_steps:
            attributes[attr.RUN_DECLARED_STEPS] = list(self._declared_steps)
        parent = _current_run.get()
        if parent is not None:
            attributes[attr.RUN_PARENT_RUN_ID] = parent.run_id
        self._clock = clock = SpanClock()
        span = tracer.start_span(
            self._name,
            context=self._parent,
            attributes=attributes,
            start_time=clock.start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        run = WorkflowRun(self._name, self._workflow_id, self._run_id, span, clean_context, tracer)
        otel_token = otel_context.attach(trace.set_span_in_context(span))
        self._tokens = (otel_token, _current_run.set(run))
        self._run = run
        return run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run, tokens, clock = self._run, self._tokens, self._clock
        if run is None or tokens is None:
            return
        self._run = self._tokens = None
        try:
            run._finish(exc)
        finally:
            _current_run.reset(tokens[1])
            otel_context.detach(tokens[0])  # type: ignore[arg-type]
            run.span.end(end_time=clock.end_ns() if clock is not None else None)


def workflow_run(
    name: str,
    *,
    workflow_id: str | None = None,
    run_id: str | None = None,
    context: Mapping[str, Any] | None = None,
    total_steps: int | None = None,
    description: str | None = None,
    declared_steps: tuple[str, ...] | list[str] | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    traceparent: str | None = None,
) -> RunScope:
    """Open a workflow run: ``with workflow_run("provision_server", ...) as run:``.

    Works as ``with`` and ``async with``; yields a :class:`WorkflowRun`.

    Args:
        name: the workflow's name (low-cardinality; the span name).
        workflow_id: the logical id (default: *name*); re-running it makes a new run.
        run_id: a unique id for this execution (default: a new random UUID); give one to
            resume a run recorded elsewhere.
        context: data about the run (server, device type ...); secrets are redacted.
        total_steps: how many steps the run is expected to take.
        description: what the workflow does.
        declared_steps: the names of the steps in order, when known up front.
        tracer_provider: the provider to use (default: the global one).
        traceparent: the ``run.traceparent`` of a run to resume in this process: its trace
            continues (and, given its *run_id* too, its history row).

    Raises:
        ValueError: a name or id is empty, too long or holds control characters, or *run_id*
            starts with the reserved ``legacy-`` prefix of imported runs.
        TypeError: a name is not a string or *context* is not a mapping.
    """
    return RunScope(
        name,
        workflow_id,
        run_id,
        context,
        total_steps,
        description,
        check_names(declared_steps, "declared_steps") if declared_steps else None,
        tracer_provider,
        traceparent,
    )


def _remote_parent(traceparent: str) -> otel_context.Context:
    """The context of the remote span *traceparent* names; ``ValueError`` if it is invalid."""
    parent = TraceContextTextMapPropagator().extract({"traceparent": str(traceparent).strip()})
    if not trace.get_current_span(parent).get_span_context().is_valid:
        raise ValueError(f"invalid traceparent {str(traceparent)[:80]!r}: expected {_TP_SHAPE}")
    return parent
