"""The :class:`Step` of the class-based engine, one unit of work of a ``Workflow``: this
module owns what a step *is*, namely its name, description and retry policy (checked when the
step is built), the ``execute`` and ``validate_prerequisites`` hooks a subclass overrides, and
:meth:`Step.from_function`, which wraps a plain (sync or ``async def``) function as a step, plus
the docstring helpers that also give a ``Workflow`` its default description. It decides nothing
about running steps. It is private so that ``instrumentation.step`` stays the decorator;
import :class:`Step` from :mod:`instrumentation.engine`, which re-exports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ._validation import check_name, check_optional_text
from .results import StepContext, StepResult, check_delay

__all__ = ["Step", "StepFunction", "doc_line", "own_doc_line"]


def doc_line(obj: Any) -> str | None:
    doc = inspect.cleandoc(obj.__doc__ or "")
    return doc.splitlines()[0] if doc else None


def own_doc_line(cls: type, base: type) -> str | None:
    # A user's subclass documents itself; the classes defined next to *base* (this package's
    # own Step or Workflow classes) describe the API instead.
    return None if cls.__module__ == base.__module__ else doc_line(cls)


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
        self.description = description or cls.description or own_doc_line(cls, Step)
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
        return cls(fn, step_name, description or doc_line(fn), max_retries, retry_delay)


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
