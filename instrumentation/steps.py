"""One step attempt: the ``run.step(...)`` scope and the handle it yields.

A step span is a child of its run's span named after the step, carrying the run id, the step's
1-based index and attempt from creation. The handle lets the code inside the step say how it
ended without raising (``skip``, ``fail``, ``retrying``) and, where the step opts in, what it
was given and what it returned (``set_input``, ``set_output``: redacted, bounded JSON); an
exception leaving the block marks the attempt ``failed`` and is re-raised unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from . import attributes as attr
from ._clock import SpanClock
from ._spans import AsyncScope, error_description, record_error
from .attributes import StepStatus
from .clean import clean_error_type, clean_json, clean_message
from .limits import get_limits

__all__ = ["StepOwner", "StepRun", "StepScope", "io_json"]


class StepOwner(Protocol):
    """What a step needs of the run it belongs to (``WorkflowRun`` is one)."""

    @property
    def run_id(self) -> str:
        """The run's id, carried by every step span."""
        ...

    @property
    def context(self) -> Mapping[str, Any]:
        """The run's context (redacted)."""
        ...

    @property
    def parent_context(self) -> Context:
        """The context step spans start in: the run's span is their parent."""
        ...

    def step_finished(self, step: StepRun) -> None:
        """Called once when an attempt ends, with its final status set."""
        ...


class StepRun:
    """Handle of one step attempt, yielded by ``with run.step(...) as step:``."""

    __slots__ = ("_explicit", "attempt", "index", "message", "name", "run", "span", "status")

    def __init__(self, run: StepOwner, name: str, index: int, attempt: int, span: Span) -> None:
        self.run = run
        self.name = name
        self.index = index
        self.attempt = attempt
        self.span = span
        self.status = StepStatus.RUNNING
        self.message: str | None = None
        self._explicit: tuple[StepStatus, str | None, str | None] | None = None

    def set_message(self, message: str) -> None:
        """Attach a human-readable outcome message to the step (redacted and bounded)."""
        self.message = _clean(message)

    def set_input(self, value: Any) -> None:
        """Record what the step was given (``workflow.step.input``, the step row's ``input``).

        *value* is stored as JSON, redacted by the context's rules (secret-looking keys and
        credentials in URLs) and cut to ``Limits.io_bytes``; an object JSON cannot hold is
        stored as its ``repr``. Nothing is recorded unless a step calls this.
        """
        self.span.set_attribute(attr.STEP_INPUT, io_json(value))

    def set_output(self, value: Any) -> None:
        """Record what the step returned (``workflow.step.output``, the row's ``output``),
        redacted and bounded as :meth:`set_input`."""
        self.span.set_attribute(attr.STEP_OUTPUT, io_json(value))

    def skip(self, message: str | None = None) -> None:
        """End the step as ``skipped`` when the block exits normally."""
        self._explicit = (StepStatus.SKIPPED, _clean(message), None)

    def fail(self, message: str, *, error_type: str | None = None) -> None:
        """End the step as ``failed`` without raising."""
        kind = None if error_type is None else clean_error_type(error_type)
        self._explicit = (StepStatus.FAILED, _clean(message), kind)

    def retrying(self, message: str | None = None) -> None:
        """End the attempt as ``retrying``: it failed and another attempt follows."""
        self._explicit = (StepStatus.RETRYING, _clean(message), None)

    def _finish(self, exc: BaseException | None) -> None:
        span = self.span
        if exc is not None:
            explicit = self._explicit
            self.status = (
                StepStatus.RETRYING
                if explicit is not None and explicit[0] == StepStatus.RETRYING
                else StepStatus.FAILED
            )
            self.message = error_description(exc)
            record_error(span, exc, self.message)
        elif self._explicit is None:
            self.status = StepStatus.COMPLETED
        else:
            status, message, error_type = self._explicit
            self.status = status
            if message is not None:
                self.message = message
            if status in (StepStatus.FAILED, StepStatus.RETRYING):
                if error_type:
                    span.set_attribute(attr.ERROR_TYPE, error_type)
                span.set_status(Status(StatusCode.ERROR, message or ""))
        if self.message is None:
            span.set_attribute(attr.STEP_STATUS, self.status.value)
        else:
            span.set_attributes(
                {
                    attr.STEP_STATUS: self.status.value,
                    attr.STEP_MESSAGE: clean_message(self.message),
                }
            )
        self.run.step_finished(self)


def io_json(value: Any) -> str:
    """*value* as the redacted JSON text of a step's input or output, within ``Limits.io_bytes``."""
    return clean_json(value, get_limits().io_bytes)[1]


def _clean(message: object) -> str | None:
    """A message as redacted, bounded text (any object is accepted; ``None`` stays)."""
    return None if message is None else clean_message(message)


class StepScope(AsyncScope[StepRun]):
    """``with``/``async with`` scope of one step attempt; see ``WorkflowRun.step``."""

    __slots__ = ("_attributes", "_clock", "_name", "_run", "_step", "_token", "_tracer")
    _clock: SpanClock

    def __init__(
        self,
        run: StepOwner,
        tracer: trace.Tracer,
        name: str,
        index: int,
        attempt: int,
        description: str | None,
    ) -> None:
        self._run = run
        self._tracer = tracer
        self._name = name
        attributes: dict[str, Any] = {
            attr.RUN_ID: run.run_id,
            attr.STEP_NAME: name,
            attr.STEP_INDEX: index,
            attr.STEP_ATTEMPT: attempt,
        }
        if description is not None:
            attributes[attr.STEP_DESCRIPTION] = clean_message(description)
        self._attributes = attributes
        self._step: StepRun | None = None
        self._token: object | None = None

    def __enter__(self) -> StepRun:
        parent = self._run.parent_context
        self._clock = clock = SpanClock()
        span = self._tracer.start_span(
            self._name,
            context=parent,
            attributes=self._attributes,
            start_time=clock.start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        attrs = self._attributes
        step = StepRun(
            self._run, self._name, attrs[attr.STEP_INDEX], attrs[attr.STEP_ATTEMPT], span
        )
        self._token = otel_context.attach(trace.set_span_in_context(span, parent))
        self._step = step
        return step

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        step, token = self._step, self._token
        if step is None:
            return
        self._step = self._token = None
        try:
            step._finish(exc)
        finally:
            otel_context.detach(token)  # type: ignore[arg-type]
            step.span.end(end_time=self._clock.end_ns())
