"""The two runners of the class-based engine and the requests they serve: the driver (a
generator in :mod:`instrumentation._driver`) makes every decision of a run and yields a
:class:`Call` for each call of user code and a :class:`Sleep` for each pause; :func:`run_sync`
(behind ``Workflow.run``) and :func:`run_async` (behind ``Workflow.arun``) carry them out and
send back the call's value, or throw its exception in at the ``yield``. The runners decide
nothing, so the sync and async APIs cannot drift apart; the one difference is that
:func:`run_sync` refuses an awaitable with :class:`AsyncInSyncRun`, which is never retried.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import FlowtelError
from .results import StepContext, WorkflowResult

__all__ = [
    "AsyncInSyncRun",
    "Call",
    "Driver",
    "Request",
    "Sleep",
    "async_message",
    "run_async",
    "run_sync",
]


@dataclass(frozen=True, slots=True)
class Call:
    """Call ``fn(context)``, awaiting the result under ``arun``."""

    fn: Callable[[StepContext], Any]
    context: StepContext
    what: str  # e.g. "step 'commission' execute()", for error messages


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Request = Call | Sleep
Driver = Generator[Request, Any, WorkflowResult]


class AsyncInSyncRun(FlowtelError, TypeError):
    """User code returned an awaitable under ``Workflow.run``; never retried."""


def async_message(workflow: str, what: str) -> str:
    return (
        f"workflow '{workflow}': {what} is async, but Workflow.run() is synchronous; "
        "use `await workflow.arun(context)` (or `asyncio.run(workflow.arun(context))`)"
    )


class _Named(Protocol):
    name: str


def run_sync(gen: Driver, workflow: _Named) -> WorkflowResult:
    """Drive *gen* to its end, sleeping with ``time.sleep``; *workflow* names it in errors."""
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
            if isinstance(request, Sleep):
                time.sleep(request.seconds)
            else:
                value = request.fn(request.context)
                if inspect.isawaitable(value):
                    if inspect.iscoroutine(value):
                        value.close()  # never awaited: no RuntimeWarning
                    raise AsyncInSyncRun(async_message(workflow.name, request.what))
        except BaseException as exc:  # thrown into the driver, which decides
            error = exc


async def run_async(gen: Driver) -> WorkflowResult:
    """Drive *gen* to its end, awaiting awaitables and sleeping with ``asyncio.sleep``."""
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
            if isinstance(request, Sleep):
                await asyncio.sleep(request.seconds)
            else:
                value = request.fn(request.context)
                if inspect.isawaitable(value):
                    value = await value
        except BaseException as exc:  # thrown into the driver, which decides
            error = exc
