"""The class-based API: a :class:`Workflow` of :class:`Step` objects, for engines built like the
old provisioning system, on top of ``workflow_run(...)`` and ``run.step(...)``. A step's
``execute(context)`` returns a :class:`StepResult` (success with data and an optional jump to
another step, failure that stops or continues, retry after a delay, skip); the workflow checks
prerequisites, runs its steps in order, retries, guards against ``next_step`` loops and always
calls ``cleanup``. Every attempt of every step is its own span. ``Workflow.run`` is synchronous
and ``Workflow.arun`` awaits async steps; both drive one generator
(:func:`instrumentation._driver.drive`) that yields each call of user code and each pause to its
runner (:mod:`instrumentation._runner`), so the two share every decision. An exception from a
step leaves unchanged once its retries are spent; cancellation marks the run ``cancelled``.
This module owns :class:`Workflow` and its checks before a run; :class:`Step` lives in
:mod:`instrumentation._step` and is re-exported here with the results and constants, so this
module's ``__all__`` stays the whole class-based API.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from opentelemetry import trace

from ._driver import CLEANUP_ERROR_EVENT, PREREQUISITES_NOT_MET, drive
from ._runner import Driver, async_message, run_async, run_sync
from ._step import Step, StepFunction, own_doc_line
from ._validation import check_name, check_optional_text
from .results import (
    ResultStatus,
    StepContext,
    StepExecutionResult,
    StepResult,
    WorkflowResult,
)

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
        self.description = description or cls.description or own_doc_line(cls, Workflow)
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
        return run_sync(self._drive(context, steps), self)

    async def arun(self, context: StepContext | None = None) -> WorkflowResult:
        """Run the workflow, awaiting async steps, prerequisites and cleanup.

        Sync steps run on the event loop's thread, as in :meth:`run`. Arguments, return
        value and exceptions are those of :meth:`run` (``asyncio.CancelledError`` included:
        the run is ``cancelled`` and cleanup is awaited first).
        """
        context = self._check_context(context)
        steps = self._check_steps()
        return await run_async(self._drive(context, steps))

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
                raise TypeError(async_message(self.name, what))

    def _drive(self, context: StepContext, steps: list[Step]) -> Driver:
        """The generator both runners drive: every decision of the run (see ``_driver``)."""
        return drive(self, context, steps)
