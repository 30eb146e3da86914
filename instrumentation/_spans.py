"""Shared span plumbing: the cached tracer, context attributes and exception outcomes.

Everything here runs on the workflow's own thread, so it is kept to a few dictionary operations
per span. Exceptions are classified once: ``asyncio.CancelledError``, ``KeyboardInterrupt`` and
``SystemExit`` cancel a run; any other ``Exception`` fails it. The SDK only records
``Exception``; the ``BaseException`` cases are recorded here.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Mapping
from itertools import islice
from types import TracebackType
from typing import Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from . import attributes as attr
from ._version import __version__
from .clean import clean_error_type, clean_json, clean_message, clean_stacktrace
from .limits import get_limits

__all__ = [
    "CANCELLING",
    "AsyncScope",
    "context_attributes",
    "error_description",
    "exception_attributes",
    "get_tracer",
    "is_cancellation",
    "record_error",
    "traceparent_of",
]

_PROPAGATOR = TraceContextTextMapPropagator()

CANCELLING: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
)

_cache: tuple[trace.TracerProvider | None, trace.Tracer | None] = (None, None)


def traceparent_of(span_context: SpanContext) -> str:
    """The W3C ``traceparent`` of *span_context*, written by the W3C propagator (``""`` for
    an invalid context, which has no ``traceparent``)."""
    carrier: dict[str, str] = {}
    span = trace.NonRecordingSpan(span_context)
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def get_tracer(tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """Return flowtel's tracer from *tracer_provider* or the global provider (cached)."""
    global _cache
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    cached_provider, cached_tracer = _cache
    if cached_provider is provider and cached_tracer is not None:
        return cached_tracer

    tracer = provider.get_tracer(attr.INSTRUMENTATION_NAME, __version__)
    _cache = (provider, tracer)
    return tracer


def is_cancellation(exc: BaseException) -> bool:
    """Whether *exc* cancels (rather than fails) a run."""
    return isinstance(exc, CANCELLING)


def _attribute_value(value: Any) -> AttributeValue:
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def context_attributes(context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Redact *context* and return ``(clean_context, span_attributes)``.

    ``clean_context`` is JSON-safe, redacted and within ``Limits.context_bytes``; the
    attributes hold one ``workflow.context.<key>`` entry for each of the first
    ``Limits.context_attributes`` keys (nested values JSON-encoded) plus the whole context as
    JSON under ``workflow.context_json``.
    """
    limits = get_limits()
    clean, text = clean_json(context, limits.context_bytes)
    attrs: dict[str, Any] = {
        attr.CONTEXT_PREFIX + key: _attribute_value(value)
        for key, value in islice(clean.items(), limits.context_attributes)
    }
    attrs[attr.RUN_CONTEXT_JSON] = text
    return clean, attrs


def exception_attributes(exc: BaseException) -> dict[str, AttributeValue]:
    """The ``exception.*`` event attributes of *exc*: redacted, bounded, never raising."""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # a hostile __str__ or a broken frame: keep what is known
        stack = f"{_qualified_name(type(exc))}: <traceback unavailable>"
    return {
        "exception.type": clean_error_type(_qualified_name(type(exc))),
        "exception.message": clean_message(_message(exc)),
        "exception.stacktrace": clean_stacktrace(stack),
        "exception.escaped": True,
    }


def record_error(span: Span, exc: BaseException, description: str) -> None:
    """Record *exc* on *span* with ERROR status and ``error.type`` (never raises).

    The exception event is written here rather than by ``Span.record_exception`` so that its
    message, stack trace and the status description are redacted and bounded first.
    """
    try:
        span.add_event("exception", exception_attributes(exc))
        span.set_attribute(attr.ERROR_TYPE, clean_error_type(_qualified_name(type(exc))))
        span.set_status(Status(StatusCode.ERROR, clean_message(description)))
    except Exception:  # pragma: no cover - a broken SDK must not change the user's outcome
        pass


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return "<unprintable message>"


def error_description(exc: BaseException) -> str:
    """``TypeName: message`` for *exc* (the message only when it has one), redacted and
    bounded by ``Limits.message_bytes``."""
    text = _message(exc)
    name = type(exc).__qualname__
    return clean_message(f"{name}: {text}" if text else name)


_T = TypeVar("_T")


class AsyncScope(Generic[_T]):
    """Makes a synchronous ``with`` scope (yielding a ``_T``) usable as ``async with`` too.

    Opening and closing a span never awaits, so the async form runs the sync one; the scope
    stays bound to the task that entered it through the context variables it sets.
    """

    def __enter__(self) -> _T:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    async def __aenter__(self) -> _T:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
