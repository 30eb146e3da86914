"""The driver of the class-based engine: one generator, :func:`drive`, that makes every decision
of a ``Workflow`` run and does no I/O. It opens the run's span, checks the workflow's
prerequisites, runs the steps in order (each attempt in its own step span), follows
``next_step`` jumps, retries, stops ``next_step`` loops at ``max_step_executions``, always
calls ``cleanup`` and builds the :class:`~instrumentation.results.WorkflowResult`. Each call of
user code and each pause is yielded to a runner (:mod:`instrumentation._runner`) as a ``Call``
or a ``Sleep``; the runner sends back the call's value or throws its exception in at the
``yield``, so spans, retries and cleanup behave as if the call happened right there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace

from ._runner import AsyncInSyncRun, Call, Driver, Request, Sleep
from ._spans import error_description, exception_attributes
from ._step import Step
from .attributes import RunStatus
from .results import ResultStatus, StepContext, StepResult, WorkflowResult
from .runs import WorkflowRun, workflow_run

__all__ = ["CLEANUP_ERROR_EVENT", "PREREQUISITES_NOT_MET", "drive"]

CLEANUP_ERROR_EVENT = "workflow.cleanup.error"
"""Run-span event recording a ``cleanup`` exception that was swallowed to keep the original."""
PREREQUISITES_NOT_MET = "prerequisites not met"
"""Start of the message of a step or run whose ``validate_prerequisites`` returned false."""


class _Workflow(Protocol):
    """What the driver reads of a ``Workflow``, each at the moment the run needs it."""

    name: str
    description: str | None
    tracer_provider: trace.TracerProvider | None
    max_step_executions: int | None

    def validate_prerequisites(self, context: StepContext) -> bool | Awaitable[bool]: ...

    def cleanup(self, context: StepContext) -> Awaitable[None] | None: ...


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


def drive(workflow: _Workflow, context: StepContext, steps: list[Step]) -> Driver:
    """Run *workflow*, yielding each call of user code and each sleep to the runner.

    The runner sends back the call's value or throws its exception in at the ``yield``,
    so spans, retries and cleanup behave as if the call happened right there.
    """
    state = _State()
    scope = workflow_run(
        workflow.name,
        workflow_id=context.workflow_id or workflow.name,
        context=context.as_context(),
        total_steps=len(steps),
        description=workflow.description,
        declared_steps=[step.name for step in steps],
        tracer_provider=workflow.tracer_provider,
    )
    with scope as run:
        primary: BaseException | None = None
        try:
            yield from _drive_steps(workflow, run, context, steps, state)
        except BaseException as exc:
            primary = exc
            raise
        finally:
            # GeneratorExit: the runner itself is being closed; nothing may be awaited.
            if not isinstance(primary, GeneratorExit):
                try:
                    yield Call(workflow.cleanup, context, "cleanup()")
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


def _fail_run(run: WorkflowRun, state: _State, message: str) -> None:
    state.error_message = message
    run.fail(message)


def _drive_steps(
    workflow: _Workflow, run: WorkflowRun, context: StepContext, steps: list[Step], state: _State
) -> Generator[Request, Any, None]:
    known_errors = len(context.errors)
    snapshot = context.as_context()
    ready = yield Call(workflow.validate_prerequisites, context, "validate_prerequisites()")
    snapshot = _sync_run_context(run, context, snapshot)
    if not ready:
        reasons = context.errors[known_errors:]
        reason = (
            "; ".join(reasons) or f"{type(workflow).__name__}.validate_prerequisites() is false"
        )
        message = f"{PREREQUISITES_NOT_MET}: {reason}"
        if not reasons:
            context.errors.append(message)
        _fail_run(run, state, message)
        return
    positions: dict[str, int] = {}
    for i, step in enumerate(steps):
        positions.setdefault(step.name, i)
    limit = workflow.max_step_executions or 10 * len(steps) + sum(s.max_retries for s in steps)
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
                _fail_run(run, state, message)
                return
            executions += 1
            attempts[position] += 1
            this = _Attempt(position, attempts[position], retries_left)
            outcome = yield from _attempt(workflow, run, context, steps, positions, this, state)
            snapshot = _sync_run_context(run, context, snapshot)
            if outcome.retry_delay is None:
                break
            retries_left -= 1
            if outcome.retry_delay > 0:
                yield Sleep(outcome.retry_delay)
        if outcome.position is None:
            return
        position = outcome.position


def _attempt(
    workflow: _Workflow,
    run: WorkflowRun,
    context: StepContext,
    steps: list[Step],
    positions: dict[str, int],
    current: _Attempt,
    state: _State,
) -> Generator[Request, Any, _Next]:
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
            if not (yield Call(step.validate_prerequisites, context, what)):
                handle.fail(PREREQUISITES_NOT_MET)
                return _stop(run, context, state, step, PREREQUISITES_NOT_MET)
            try:
                result = yield Call(step.execute, context, f"{label} execute()")
            except Exception as exc:
                if retries_left > 0 and not isinstance(exc, AsyncInSyncRun):
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
                return _stop(run, context, state, step, message)
            if status is ResultStatus.FAILURE and not result.should_continue:
                handle.fail(result.message)
                return _stop(run, context, state, step, result.message)
            following = position + 1
            if result.next_step is not None:
                following = _position_of(workflow, result.next_step, step, positions)
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


def _stop(run: WorkflowRun, context: StepContext, state: _State, step: Step, message: str) -> _Next:
    context.errors.append(message)
    state.failed_step = step.name
    _fail_run(run, state, f"step '{step.name}' failed: {message}")
    return _Next(None)


def _position_of(workflow: _Workflow, target: str, step: Step, positions: dict[str, int]) -> int:
    if target not in positions:
        raise ValueError(
            f"step '{step.name}' asked for next_step={target!r}, which is not a step of "
            f"workflow '{workflow.name}'; known steps: {', '.join(positions)}"
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


def _record_cleanup_error(run: WorkflowRun, exc: Exception) -> None:
    attributes = {k: v for k, v in exception_attributes(exc).items() if k != "exception.escaped"}
    with contextlib.suppress(Exception):  # a broken SDK must not change the outcome
        run.span.add_event(CLEANUP_ERROR_EVENT, attributes)
