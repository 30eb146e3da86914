"""The decorator API: ``@workflow`` and ``@step``, bare or with arguments, sync and async.

``@workflow`` runs the decorated function inside :func:`~instrumentation.workflow_run`;
``workflow_id`` and ``context`` may be computed from the call's arguments. ``@step`` runs the
function as the next step of the current run; called outside any workflow it is a plain span
that records no history. ``@step(record_io=True)`` also records the call's arguments (by
parameter name, so a ``password`` argument is redacted like a context key) and its return
value. Signatures (and ``inspect.iscoroutinefunction``) are preserved.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ParamSpec, TypeVar, overload

from . import attributes as attr
from ._spans import error_description, get_tracer, record_error
from ._validation import check_name, check_optional_text
from .runs import current_run, workflow_run
from .steps import StepRun

__all__ = ["step", "workflow"]

P = ParamSpec("P")
R = TypeVar("R")

IdFactory = str | Callable[..., str] | None
ContextFactory = Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None


def _resolve(value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return value(*args, **kwargs) if callable(value) else value


@overload
def workflow(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def workflow(
    *,
    name: str | None = None,
    workflow_id: IdFactory = None,
    context: ContextFactory = None,
    total_steps: int | None = None,
    description: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def workflow(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    workflow_id: IdFactory = None,
    context: ContextFactory = None,
    total_steps: int | None = None,
    description: str | None = None,
) -> Any:
    """Record each call of the decorated function as one workflow run.

    Args:
        name: the workflow's name (default: the function's ``__name__``).
        workflow_id: the logical id, or a callable given the call's arguments that returns it.
        context: the run's context, or a callable given the call's arguments that returns it.
        total_steps: how many steps a run is expected to take.
        description: what the workflow does (default: the docstring's first line).
    """
    if name is not None:
        check_name(name, "workflow name")
    check_optional_text(description, "description")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        run_name = name or fn.__name__
        doc = description
        if doc is None and fn.__doc__:
            doc = fn.__doc__.strip().splitlines()[0]

        def scope(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return workflow_run(
                run_name,
                workflow_id=_resolve(workflow_id, args, kwargs),
                context=_resolve(context, args, kwargs),
                total_steps=total_steps,
                description=doc,
            )

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with scope(args, kwargs):
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with scope(args, kwargs):
                return fn(*args, **kwargs)

        return wrapper

    return decorate(func) if func is not None else decorate


class _PlainSpan:
    """A span for a ``@step`` called outside any workflow: no run id, no history."""

    __slots__ = ("_cm", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._cm: Any = None

    def __enter__(self) -> None:
        self._cm = get_tracer().start_as_current_span(
            self._name, record_exception=False, set_status_on_exception=False
        )
        span = self._cm.__enter__()
        span.set_attribute(attr.STEP_NAME, self._name)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            from opentelemetry import trace

            record_error(trace.get_current_span(), exc, error_description(exc))
        self._cm.__exit__(exc_type, exc, tb)


def _step_scope(step_name: str, description: str | None) -> Any:
    run = current_run()
    if run is None:
        return _PlainSpan(step_name)
    return run.step(step_name, description=description)


def _arguments(signature: inspect.Signature | None, args: Any, kwargs: Any) -> dict[str, Any]:
    """The call's arguments by parameter name, defaults included (``self``/``cls`` left out)."""
    if signature is not None:
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError:
            pass  # the call itself will raise; record what was passed
        else:
            bound.apply_defaults()  # what the step was given, defaults included
            return {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
    return {"args": list(args), "kwargs": dict(kwargs)}


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none
        return None


@overload
def step(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def step(
    *, name: str | None = None, description: str | None = None, record_io: bool = False
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def step(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    record_io: bool = False,
) -> Any:
    """Record each call of the decorated function as the next step of the current run.

    Args:
        name: the step's name (default: the function's ``__name__``).
        description: what the step does (default: the docstring's first line).
        record_io: also record the arguments (``step.set_input``) and the return value
            (``step.set_output``), redacted and bounded (``Limits.io_bytes``).
    """
    if name is not None:
        check_name(name, "step name")
    check_optional_text(description, "description")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        step_name = name or fn.__name__
        doc = description
        if doc is None and fn.__doc__:
            doc = fn.__doc__.strip().splitlines()[0]

        signature = _signature(fn) if record_io else None

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _step_scope(step_name, doc) as handle:
                    recording = record_io and isinstance(handle, StepRun)
                    if recording:
                        handle.set_input(_arguments(signature, args, kwargs))
                    result: Awaitable[Any] = fn(*args, **kwargs)
                    value = await result
                    if recording:
                        handle.set_output(value)
                    return value

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _step_scope(step_name, doc) as handle:
                recording = record_io and isinstance(handle, StepRun)
                if recording:
                    handle.set_input(_arguments(signature, args, kwargs))
                value = fn(*args, **kwargs)
                if recording:
                    handle.set_output(value)
                return value

        return wrapper

    return decorate(func) if func is not None else decorate
