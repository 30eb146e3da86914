"""The values the class-based engine passes around: the steps' shared state, their results.

Steps read and update one mutable :class:`StepContext` (the server being worked on, step outputs
in ``data``, failure messages in ``errors``). A step's ``execute`` returns a :class:`StepResult`
built with one of its constructors (``success``, ``failure``, ``retry``, ``skip``); the engine
in :mod:`instrumentation.engine` turns it into the step span's status and decides what runs
next. ``Workflow.run``/``arun`` return a :class:`WorkflowResult` summarising the finished run.
``StepExecutionResult`` is an alias of :class:`StepResult` for code written against the old
provisioning engine. Standard library only; nothing here touches a span.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .attributes import RunStatus

__all__ = [
    "ResultStatus",
    "StepContext",
    "StepExecutionResult",
    "StepResult",
    "WorkflowResult",
]


@dataclass
class StepContext:
    """The mutable state a workflow's steps share.

    The named fields may be given positionally in the old engine's order
    (``workflow_id, server_id, device_type, server_ip, ipmi_ip, gateway``).

    Attributes:
        workflow_id: the logical id of the run (default: the workflow's name).
        server_id: the server being worked on.
        device_type: its device type.
        server_ip: its address.
        ipmi_ip: its IPMI address.
        gateway: its gateway.
        data: step outputs; ``StepResult.success(data=...)`` merges into it.
        errors: failure messages, in order.
        extra: anything else that describes the run; becomes part of its context.
    """

    NAMED_FIELDS: ClassVar[tuple[str, ...]] = (
        "workflow_id",
        "server_id",
        "device_type",
        "server_ip",
        "ipmi_ip",
        "gateway",
    )

    workflow_id: str | None = None
    server_id: str | None = None
    device_type: str | None = None
    server_ip: str | None = None
    ipmi_ip: str | None = None
    gateway: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_context(self) -> dict[str, Any]:
        """Return the run's context: the named fields that are set, then ``extra``.

        A named field wins over an ``extra`` entry of the same key; ``data`` and ``errors``
        are not part of it.
        """
        context = dict(self.extra)
        context.update(
            {key: value for key in self.NAMED_FIELDS if (value := getattr(self, key)) is not None}
        )
        return context


class ResultStatus(enum.StrEnum):
    """How a step's ``execute`` says it went."""

    SUCCESS = "success"
    FAILURE = "failure"
    RETRY = "retry"
    SKIP = "skip"


def _check_message(message: Any) -> str:
    if not isinstance(message, str):
        raise TypeError(f"message must be a string, not {type(message).__name__}")
    return message


def _check_next_step(next_step: Any) -> str | None:
    if next_step is not None and (not isinstance(next_step, str) or not next_step):
        raise TypeError(f"next_step must be a step's name or None, not {next_step!r}")
    return next_step


def check_delay(delay: Any, what: str) -> float:
    """Return *delay* as a float if it is a finite number of seconds >= 0, else raise."""
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(delay).__name__}")
    if not math.isfinite(delay) or delay < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, not {delay!r}")
    return float(delay)


@dataclass(slots=True)
class StepResult:
    """The outcome of one ``Step.execute`` call; build it with a constructor classmethod.

    Attributes:
        status: which outcome this is.
        message: a human-readable outcome; becomes ``workflow.step.message``.
        data: outputs merged into ``StepContext.data`` on success.
        should_continue: on failure, whether the workflow goes on with the next step.
        next_step: the name of the step to run next (forward or backward) instead of the
            following one; used when the run continues (success, or a failure with
            ``should_continue=True``).
        retry_delay: on retry, seconds to wait before the next attempt (``None``: the step's
            own ``retry_delay``).
    """

    status: ResultStatus
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    should_continue: bool = False
    next_step: str | None = None
    retry_delay: float | None = None

    @classmethod
    def success(
        cls,
        message: str = "",
        data: Mapping[str, Any] | None = None,
        *,
        next_step: str | None = None,
    ) -> StepResult:
        """The step did its work.

        Args:
            message: what it did.
            data: outputs to merge into the context's ``data``.
            next_step: the name of the step to run next instead of the following one.
        """
        if data is not None and not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping, not {type(data).__name__}")
        return cls(
            ResultStatus.SUCCESS,
            _check_message(message),
            dict(data or {}),
            next_step=_check_next_step(next_step),
        )

    @classmethod
    def failure(
        cls, message: str, should_continue: bool = False, *, next_step: str | None = None
    ) -> StepResult:
        """The step failed.

        Args:
            message: why; appended to the context's ``errors``.
            should_continue: go on with the next step (or *next_step*) instead of failing
                the run.
            next_step: with ``should_continue=True``, the step to run next; ignored otherwise.
        """
        return cls(
            ResultStatus.FAILURE,
            _check_message(message),
            should_continue=bool(should_continue),
            next_step=_check_next_step(next_step),
        )

    @classmethod
    def retry(
        cls, message: str, *, delay: float | None = None, retry_after: float | None = None
    ) -> StepResult:
        """The attempt failed but may succeed later: run the step again if retries remain.

        Args:
            message: why this attempt did not succeed.
            delay: seconds to wait before the next attempt (default: the step's
                ``retry_delay``).
            retry_after: the old engine's name for *delay*.
        """
        if retry_after is not None:
            if delay is not None:
                raise TypeError("retry() takes delay or retry_after, not both")
            delay = retry_after
        return cls(
            ResultStatus.RETRY,
            _check_message(message),
            retry_delay=None if delay is None else check_delay(delay, "delay"),
        )

    @classmethod
    def skip(cls, message: str = "") -> StepResult:
        """The step had nothing to do; it counts toward the run's progress.

        Args:
            message: why it was skipped.
        """
        return cls(ResultStatus.SKIP, _check_message(message))


StepExecutionResult = StepResult
"""The old engine's name for :class:`StepResult`."""


@dataclass(frozen=True, slots=True)
class WorkflowResult:
    """What ``Workflow.run``/``arun`` return once the run has ended without an exception.

    Attributes:
        run_id: the unique id of this execution (``workflow.run_id``).
        status: ``completed`` or ``failed``.
        steps_completed: distinct steps that completed or were skipped.
        total_steps: the number of steps the workflow declares.
        errors: a copy of the context's ``errors`` at the end of the run.
        failed_step: the name of the step whose failure failed the run, else ``None`` (a
            step that failed with ``should_continue=True`` does not count).
        data: a copy of the context's ``data`` at the end of the run.
        workflow_id: the logical id of the run.
        workflow_name: the workflow's name.
        trace_id: the run's trace id (32 hex digits).
        error_message: why the run failed, else ``None``.
    """

    run_id: str
    status: RunStatus
    steps_completed: int
    total_steps: int
    errors: list[str]
    failed_step: str | None
    data: dict[str, Any]
    workflow_id: str
    workflow_name: str
    trace_id: str
    error_message: str | None = None

    @property
    def success(self) -> bool:
        """Whether the run completed (the old engine's boolean)."""
        return self.status is RunStatus.COMPLETED

    def __bool__(self) -> bool:
        """Truthy only for a completed run, as the old engine's ``execute()`` result was."""
        return self.success
