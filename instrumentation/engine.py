"""The class-based API: a :class:`Workflow` of :class:`Step` objects, for engines built like the
old provisioning system, on top of ``workflow_run(...)`` and ``run.step(...)``. A step's
``execute(context)`` returns a :class:`StepResult` (success with data and an optional jump to
another step, failure that stops or continues, retry after a delay, skip); the workflow checks
prerequisites, runs its steps in order, retries, guards against ``next_step`` loops and always
calls ``cleanup``. Every attempt of every step is its own span. ``Workflow.run`` is synchronous
and ``Workflow.arun`` awaits async steps; both drive one generator (:meth:`Workflow._drive`)
that yields each call of user code and each pause to its runner, so the two share every
decision. An exception from a step leaves unchanged once its retries are spent; cancellation
marks the run ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from ._spans import error_description
from ._validation import check_name, check_optional_text
from .attributes import RunStatus
from .redaction import mask_url_credentials
from .results import (
    ResultStatus,
    StepContext,
    StepExecutionResult,
    StepResult,
    WorkflowResult,
    check_delay,
)
from .runs import WorkflowRun, workflow_run

__all__ = [
    "CLEANUP_ERROR_EVENT",
    "PREREQUISITES_NOT_MET",
    "ResultStatus",
    "Step",
    "StepContext",
    "StepExecutionResult",
    "StepFunction",
    "StepResult",
    "Workflow",
    "WorkflowResult",
]

CLEANUP_ERROR_EVENT = "workflow.cleanup.error"
"""Run-span event recording a ``cleanup`` exception that was swallowed to keep the original."""
PREREQUISITES_NOT_MET = "prerequisites not met"
"""Start of the message of a step or run whose ``validate_prerequisites`` returned false."""


def _doc_line(obj: Any) -> str | None:
    doc = inspect.cleandoc(obj.__doc__ or "")
    return doc.splitlines()[0] if doc else None


def _own_doc_line(cls: type) -> str | None:
    # A user's subclass documents itself; this module's classes describe the API instead.
    return None if cls.__module__ == __name__ else _doc_line(cls)


def _check_retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_retries must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"max_retries must be zero or more, not {value}")
    return value


StepFunction = Callable[[StepContext], StepResult | Awaitable[StepResult]]
"""A plain function usable as a step's ``execute`` (see :meth:`Step.from_function`)."""


class Step:
    """One step of a :class:`Workflow`: subclass it and override :meth:`execute`.

    ``name``, ``description``, ``max_retries`` and ``retry_delay`` may be class attributes or
    constructor arguments (the arguments win). The name defaults to the class name, the
    description to the first line of the subclass's docstring. ``max_retries`` caps the extra
    attempts after an exception or a ``StepResult.retry``: with the default ``0`` a step is
    never retried, and a ``retry`` result fails it. ``execute`` and
    ``validate_prerequisites`` may be ``async def`` (then run the workflow with ``arun``).
    """

    name: str = ""
    description: str | None = None
    max_retries: int = 0
    retry_delay: float = 0.0

    def __init__(
        self,
        name: str | None = None,
        description: str | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
    ) -> None:
        """Set the step's name, description and retry policy (``None``: keep the default).

        Raises:
            TypeError, ValueError: an argument is of the wrong type or out of range.
        """
        cls = type(self)
        self.name = check_name(name or cls.name or cls.__name__, "step name")
        check_optional_text(description, "description")
        self.description = description or cls.description or _own_doc_line(cls)
        self.max_retries = _check_retries(cls.max_retries if max_retries is None else max_retries)
        delay = cls.retry_delay if retry_delay is None else retry_delay
        self.retry_delay = check_delay(delay, "retry_delay")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def execute(self, context: StepContext) -> StepResult | Awaitable[StepResult]:
        """Do the step's work and say how it went; may be ``async def``.

        Raising an exception counts as a failed attempt: retried while retries remain, else
        the workflow stops and the exception propagates out of ``run``/``arun``.
        """
        raise NotImplementedError(f"{type(self).__name__}.execute() is not implemented")

    def validate_prerequisites(self, context: StepContext) -> bool | Awaitable[bool]:
        """Return whether the step can run (default ``True``); may be ``async def``.

        Checked before each attempt, inside the attempt's span; false fails the step and the
        run. An exception here is not retried.
        """
        return True

    @staticmethod
    def from_function(
        fn: StepFunction,
        name: str | None = None,
        description: str | None = None,
        max_retries: int = 0,
        retry_delay: float = 0.0,
    ) -> Step:
        """Build a step whose ``execute`` is *fn* (sync or ``async def``).

        Args:
            fn: called with the context; returns a :class:`StepResult`.
            name: the step's name (default: ``fn.__name__``).
            description: what it does (default: the first line of *fn*'s docstring).
            max_retries: extra attempts allowed after a failed one.
            retry_delay: seconds between attempts unless the result says otherwise.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        step_name = name or getattr(fn, "__name__", None)
        if not step_name or step_name == "<lambda>":
            raise ValueError(f"cannot name a step after {fn!r}; pass name=...")
        cls = _AsyncFunctionStep if inspect.iscoroutinefunction(fn) else _FunctionStep
        return cls(fn, step_name, description or _doc_line(fn), max_retries, retry_delay)


class _FunctionStep(Step):
    def __init__(
        self,
        fn: StepFunction,
        name: str,
        description: str | None,
        max_retries: int,
        retry_delay: float,
    ) -> None:
        super().__init__(name, description, max_retries, retry_delay)
        self.fn = fn

    def execute(self, context: StepContext) -> StepResult | Awaitable[StepResult]:
        return self.fn(context)


class _AsyncFunctionStep(_FunctionStep):
    async def execute(self, context: StepContext) -> StepResult:
        result = self.fn(context)
        return result if isinstance(result, StepResult) else await result


# --- the driver's requests to its runner ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """Call ``fn(context)``, awaiting the result under ``arun``."""

    fn: Callable[[StepContext], Any]
    context: StepContext
    what: str  # e.g. "step 'commission' execute()", for error messages


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


_Request = _Call | _Sleep
_Driver = Generator[_Request, Any, WorkflowResult]


class _AsyncInSyncRun(TypeError):
    """User code returned an awaitable under ``Workflow.run``; never retried."""


def _async_message(workflow: str, what: str) -> str:
    return (
        f"workflow '{workflow}': {what} is async, but Workflow.run() is synchronous; "
        "use `await workflow.arun(context)` (or `asyncio.run(workflow.arun(context))`)"
    )


@dataclass(slots=True)
class _Next:
    """What follows an attempt: ``position`` (0-based) to run next, a retry, or the end."""

    position: int | None = None  # None: stop the run
    retry_delay: float | None = None  # not None: attempt the same step again after it


@dataclass(frozen=True, slots=True)
class _Attempt:
    position: int  # 0-based
    attempt: int  # 1-based, counted over the whole run
    retries_left: int


@dataclass(slots=True)
class _State:
    failed_step: str | None = None
    error_message: str | None = None


class Workflow:
    """A named sequence of :class:`Step` objects, run as one traced, recorded workflow run.

    ``name``, ``description`` and ``steps`` may be class attributes, constructor arguments or
    set in a subclass's ``__init__`` (``self.steps = [...]``); they are read when a run starts.
    Override :meth:`validate_prerequisites` and :meth:`cleanup` as needed (both may be
    ``async def``). ``max_step_executions`` caps the step attempts of one run, to stop
    ``next_step`` loops; ``None`` means ``10 * len(steps) + sum(step.max_retries)``.
    """

    name: str = ""
    description: str | None = None
    steps: list[Step]
    tracer_provider: trace.TracerProvider | None = None
    max_step_executions: int | None = None

    def __init__(
        self,
        name: str | None = None,
        description: str | None = None,
        steps: Iterable[Step] | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        max_step_executions: int | None = None,
    ) -> None:
        """Configure the workflow (``None``: keep the class attribute or default).

        Args:
            name: the workflow's name, the run span's name (default: the class name).
            description: what it does (default: the first line of the subclass's docstring).
            steps: the steps, in order.
            tracer_provider: the provider for its spans (default: the global one).
            max_step_executions: the cap on step attempts per run (see the class docstring).
        """
        cls = type(self)
        self.name = check_name(name or cls.name or cls.__name__, "workflow name")
        check_optional_text(description, "description")
        self.description = description or cls.description or _own_doc_line(cls)
        self.steps = list(steps if steps is not None else getattr(cls, "steps", ()))
        if tracer_provider is not None:
            self.tracer_provider = tracer_provider
        if max_step_executions is not None:
            if isinstance(max_step_executions, bool) or not isinstance(max_step_executions, int):
                raise TypeError("max_step_executions must be an int or None")
            if max_step_executions < 1:
                raise ValueError(
                    f"max_step_executions must be 1 or more, not {max_step_executions}"
                )
            self.max_step_executions = max_step_executions

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} steps={[s.name for s in self.steps]}>"

    def validate_prerequisites(self, context: StepContext) -> bool | Awaitable[bool]:
        """Return whether the run can start (default ``True``); may be ``async def``.

        False fails the run before any step; errors this method appends to
        ``context.errors`` become the reason in the run's message.
        """
        return True

    def cleanup(self, context: StepContext) -> Awaitable[None] | None:
        """Release what the run acquired (default: nothing); may be ``async def``.

        Always called, inside the run's span, however the run ends. If the run is already
        raising, an exception from here is recorded as a ``workflow.cleanup.error`` event on
        the run span and swallowed; otherwise it propagates and fails the run.
        """
        return None

    def run(self, context: StepContext | None = None) -> WorkflowResult:
        """Run the workflow synchronously.

        Args:
            context: the shared state (default: an empty :class:`StepContext`).

        Returns:
            the finished run's summary, when it completed or failed without an exception.

        Raises:
            TypeError: a step, ``validate_prerequisites`` or ``cleanup`` is async (use
                :meth:`arun`), or the steps are not :class:`Step` objects.
            ValueError: a step's ``next_step`` names no step of this workflow.
            BaseException: the very exception a step (after its retries), a prerequisite
                check or ``cleanup`` raised; cancellation marks the run ``cancelled``.
        """
        context = self._check_context(context)
        steps = self._check_steps()
        self._check_sync(steps)
        gen = self._drive(context, steps)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                result: WorkflowResult = stop.value
                return result
            finally:
                error = None
            value = None
            try:
                if isinstance(request, _Sleep):
                    time.sleep(request.seconds)
                else:
                    value = request.fn(request.context)
                    if inspect.isawaitable(value):
                        if inspect.iscoroutine(value):
                            value.close()  # never awaited: no RuntimeWarning
                        raise _AsyncInSyncRun(_async_message(self.name, request.what))
            except BaseException as exc:  # thrown into the driver, which decides
                error = exc

    async def arun(self, context: StepContext | None = None) -> WorkflowResult:
        """Run the workflow, awaiting async steps, prerequisites and cleanup.

        Sync steps run on the event loop's thread, as in :meth:`run`. Arguments, return
        value and exceptions are those of :meth:`run` (``asyncio.CancelledError`` included:
        the run is ``cancelled`` and cleanup is awaited first).
        """
        context = self._check_context(context)
        steps = self._check_steps()
        gen = self._drive(context, steps)
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                request = gen.send(value) if error is None else gen.throw(error)
            except StopIteration as stop:
                result: WorkflowResult = stop.value
                return result
            finally:
                error = None
            value = None
            try:
                if isinstance(request, _Sleep):
                    await asyncio.sleep(request.seconds)
                else:
                    value = request.fn(request.context)
                    if inspect.isawaitable(value):
                        value = await value
            except BaseException as exc:  # thrown into the driver, which decides
                error = exc

    execute = run
    """The old engine's name for :meth:`run`."""

    # --- checks before a run starts -----------------------------------------------------------

    @staticmethod
    def _check_context(context: StepContext | None) -> StepContext:
        if context is None:
            return StepContext()
        if not isinstance(context, StepContext):
            raise TypeError(f"context must be a StepContext, not {type(context).__name__}")
        return context

    def _check_steps(self) -> list[Step]:
        steps = list(self.steps)
        for position, step in enumerate(steps, 1):
            if not isinstance(step, Step):
                raise TypeError(
                    f"workflow '{self.name}': step {position} is {step!r}, not a Step; wrap a "
                    "function with Step.from_function(fn)"
                )
            check_name(step.name, f"name of step {position}")
        return steps

    def _check_sync(self, steps: list[Step]) -> None:
        candidates: list[tuple[str, Callable[..., Any]]] = [
            ("validate_prerequisites()", self.validate_prerequisites),
            ("cleanup()", self.cleanup),
        ]
        for step in steps:
            candidates.append((f"step '{step.name}' execute()", step.execute))
            candidates.append(
                (f"step '{step.name}' validate_prerequisites()", step.validate_prerequisites)
            )
        for what, fn in candidates:
            if inspect.iscoroutinefunction(fn):
                raise TypeError(_async_message(self.name, what))

    # --- the driver: every decision, no I/O ---------------------------------------------------

    def _drive(self, context: StepContext, steps: list[Step]) -> _Driver:
        """Run the workflow, yielding each call of user code and each sleep to the runner.

        The runner sends back the call's value or throws its exception in at the ``yield``,
        so spans, retries and cleanup behave as if the call happened right there.
        """
        state = _State()
        scope = workflow_run(
            self.name,
            workflow_id=context.workflow_id or self.name,
            context=context.as_context(),
            total_steps=len(steps),
            description=self.description,
            declared_steps=[step.name for step in steps],
            tracer_provider=self.tracer_provider,
        )
        with scope as run:
            primary: BaseException | None = None
            try:
                yield from self._drive_steps(run, context, steps, state)
            except BaseException as exc:
                primary = exc
                raise
            finally:
                # GeneratorExit: the runner itself is being closed; nothing may be awaited.
                if not isinstance(primary, GeneratorExit):
                    try:
                        yield _Call(self.cleanup, context, "cleanup()")
                    except Exception as cleanup_error:
                        if primary is None:
                            raise
                        _record_cleanup_error(run, cleanup_error)
                primary = None
        return WorkflowResult(
            run_id=run.run_id,
            status=run.status,
            steps_completed=run.steps_completed,
            total_steps=len(steps),
            errors=list(context.errors),
            failed_step=state.failed_step,
            data=dict(context.data),
            workflow_id=run.workflow_id,
            workflow_name=run.name,
            trace_id=run.trace_id,
            error_message=None if run.status is RunStatus.COMPLETED else state.error_message,
        )

    def _fail_run(self, run: WorkflowRun, state: _State, message: str) -> None:
        state.error_message = message
        run.fail(message)

    def _drive_steps(
        self, run: WorkflowRun, context: StepContext, steps: list[Step], state: _State
    ) -> Generator[_Request, Any, None]:
        known_errors = len(context.errors)
        snapshot = context.as_context()
        ready = yield _Call(self.validate_prerequisites, context, "validate_prerequisites()")
        snapshot = _sync_run_context(run, context, snapshot)
        if not ready:
            reasons = context.errors[known_errors:]
            reason = (
                "; ".join(reasons) or f"{type(self).__name__}.validate_prerequisites() is false"
            )
            message = f"{PREREQUISITES_NOT_MET}: {reason}"
            if not reasons:
                context.errors.append(message)
            self._fail_run(run, state, message)
            return
        positions: dict[str, int] = {}
        for i, step in enumerate(steps):
            positions.setdefault(step.name, i)
        limit = self.max_step_executions or 10 * len(steps) + sum(s.max_retries for s in steps)
        attempts = [0] * len(steps)
        executions = 0
        position = 0
        while position < len(steps):
            retries_left = steps[position].max_retries
            while True:
                if executions >= limit:
                    message = (
                        f"stopped after {executions} step attempts, the limit for this workflow "
                        f"(max_step_executions={limit}); do next_step jumps form a loop?"
                    )
                    context.errors.append(message)
                    self._fail_run(run, state, message)
                    return
                executions += 1
                attempts[position] += 1
                this = _Attempt(position, attempts[position], retries_left)
                outcome = yield from self._attempt(run, context, steps, positions, this, state)
                snapshot = _sync_run_context(run, context, snapshot)
                if outcome.retry_delay is None:
                    break
                retries_left -= 1
                if outcome.retry_delay > 0:
                    yield _Sleep(outcome.retry_delay)
            if outcome.position is None:
                return
            position = outcome.position

    def _attempt(
        self,
        run: WorkflowRun,
        context: StepContext,
        steps: list[Step],
        positions: dict[str, int],
        current: _Attempt,
        state: _State,
    ) -> Generator[_Request, Any, _Next]:
        """One attempt of a step, in its own span; says what runs next."""
        position, attempt, retries_left = current.position, current.attempt, current.retries_left
        step = steps[position]
        label = f"step '{step.name}'"
        retry_on_error = False
        try:
            with run.step(
                step.name, description=step.description, index=position + 1, attempt=attempt
            ) as handle:
                what = f"{label} validate_prerequisites()"
                if not (yield _Call(step.validate_prerequisites, context, what)):
                    handle.fail(PREREQUISITES_NOT_MET)
                    return self._stop(run, context, state, step, PREREQUISITES_NOT_MET)
                try:
                    result = yield _Call(step.execute, context, f"{label} execute()")
                except Exception as exc:
                    if retries_left > 0 and not isinstance(exc, _AsyncInSyncRun):
                        retry_on_error = True
                        handle.retrying(error_description(exc))  # steps.py: ends "retrying"
                    raise
                if not isinstance(result, StepResult):
                    raise TypeError(
                        f"{label}: execute() returned {type(result).__name__}, not a "
                        "StepResult; return StepResult.success(), .failure(), .retry() or .skip()"
                    )
                status = result.status
                if status is ResultStatus.RETRY:
                    if retries_left > 0:
                        handle.retrying(result.message)
                        delay = result.retry_delay
                        return _Next(position, step.retry_delay if delay is None else delay)
                    if step.max_retries == 0:
                        message = f"retry requested but max_retries is 0: {result.message}"
                    else:
                        tries = step.max_retries + 1
                        message = f"retries exhausted after {tries} attempts: {result.message}"
                    handle.fail(message)
                    return self._stop(run, context, state, step, message)
                if status is ResultStatus.FAILURE and not result.should_continue:
                    handle.fail(result.message)
                    return self._stop(run, context, state, step, result.message)
                following = position + 1
                if result.next_step is not None:
                    following = self._position_of(result.next_step, step, positions)
                if status is ResultStatus.SKIP:
                    handle.skip(result.message or None)
                elif status is ResultStatus.FAILURE:
                    handle.fail(result.message)
                    context.errors.append(result.message)
                else:
                    if result.message:
                        handle.set_message(result.message)
                    context.data.update(result.data)
                return _Next(following)
        except Exception as exc:
            if retry_on_error:
                return _Next(position, step.retry_delay)
            context.errors.append(error_description(exc))
            state.failed_step = step.name
            raise

    def _stop(
        self, run: WorkflowRun, context: StepContext, state: _State, step: Step, message: str
    ) -> _Next:
        context.errors.append(message)
        state.failed_step = step.name
        self._fail_run(run, state, f"step '{step.name}' failed: {message}")
        return _Next(None)

    def _position_of(self, target: str, step: Step, positions: dict[str, int]) -> int:
        if target not in positions:
            raise ValueError(
                f"step '{step.name}' asked for next_step={target!r}, which is not a step of "
                f"workflow '{self.name}'; known steps: {', '.join(positions)}"
            )
        return positions[target]


def _sync_run_context(
    run: WorkflowRun, context: StepContext, snapshot: dict[str, Any]
) -> dict[str, Any]:
    """Copy context fields a step set or changed (a chosen ``server_id`` ...) onto the run."""
    try:
        current = context.as_context()
        if current != snapshot:
            run.set_context(current)
    except Exception:  # odd values or a broken redactor must not change what the run does
        return snapshot
    return current


def _qualified_name(cls: type) -> str:
    name, module = cls.__qualname__, cls.__module__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


def _record_cleanup_error(run: WorkflowRun, exc: Exception) -> None:
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    with contextlib.suppress(Exception):  # a broken SDK must not change the outcome
        run.span.add_event(
            CLEANUP_ERROR_EVENT,
            {
                "exception.type": _qualified_name(type(exc)),
                "exception.message": mask_url_credentials(str(exc)),
                "exception.stacktrace": mask_url_credentials(stack),
            },
        )
