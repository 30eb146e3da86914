"""Shared span plumbing: the cached tracer, context attributes and exception outcomes.

Everything here runs on the workflow's own thread, so it is kept to a few dictionary operations
per span. Exceptions are classified once: ``asyncio.CancelledError``, ``KeyboardInterrupt`` and
``SystemExit`` cancel a run; any other ``Exception`` fails it. The SDK only records
``Exception``; the ``BaseException`` cases are recorded here.
"""

from __future__ import annotations

import asyncio
import json
import math
import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from . import attributes as attr
from .redaction import get_redactor, mask_url_credentials

__all__ = [
    "CANCELLING",
    "context_attributes",
    "error_description",
    "get_tracer",
    "is_cancellation",
    "record_error",
    "to_json_safe",
]

CANCELLING: tuple[type[BaseException], ...] = (
    asyncio.CancelledError,
    KeyboardInterrupt,
    SystemExit,
)

_cache: tuple[trace.TracerProvider | None, trace.Tracer | None] = (None, None)


def get_tracer(tracer_provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """Return flowtel's tracer from *tracer_provider* or the global provider (cached)."""
    global _cache
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    cached_provider, cached_tracer = _cache
    if cached_provider is provider and cached_tracer is not None:
        return cached_tracer
    from . import __version__

    tracer = provider.get_tracer(attr.INSTRUMENTATION_NAME, __version__)
    _cache = (provider, tracer)
    return tracer


def is_cancellation(exc: BaseException) -> bool:
    """Whether *exc* cancels (rather than fails) a run."""
    return isinstance(exc, CANCELLING)


def to_json_safe(value: Any) -> Any:
    """Return *value* as plain JSON data: unknown objects become their ``repr``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return repr(value)


def _attribute_value(value: Any) -> AttributeValue:
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def context_attributes(context: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Redact *context* and return ``(clean_context, span_attributes)``.

    ``clean_context`` is JSON-safe and redacted; the attributes hold one
    ``workflow.context.<key>`` entry per key (nested values JSON-encoded) plus the whole
    context as JSON under ``workflow.context_json``.
    """
    clean = get_redactor().redact(to_json_safe(context))
    attrs: dict[str, Any] = {
        attr.CONTEXT_PREFIX + key: _attribute_value(value) for key, value in clean.items()
    }
    attrs[attr.RUN_CONTEXT_JSON] = json.dumps(clean, ensure_ascii=False, sort_keys=True)
    return clean, attrs


def record_error(span: Span, exc: BaseException, description: str) -> None:
    """Record *exc* on *span* with ERROR status and ``error.type`` (never raises).

    The exception event is written here rather than by ``Span.record_exception`` so that its
    message and stack trace pass through URL-credential masking first.
    """
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        span.add_event(
            "exception",
            {
                "exception.type": _qualified_name(type(exc)),
                "exception.message": mask_url_credentials(str(exc)),
                "exception.stacktrace": mask_url_credentials(stack),
                "exception.escaped": True,
            },
        )
        span.set_attribute(attr.ERROR_TYPE, _qualified_name(type(exc)))
        span.set_status(Status(StatusCode.ERROR, mask_url_credentials(description)))
    except Exception:  # pragma: no cover - a broken SDK must not change the user's outcome
        pass


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return (
        cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"
    )


def error_description(exc: BaseException) -> str:
    """``TypeName: message`` for *exc* (the message only when it has one), URLs masked."""
    text = mask_url_credentials(str(exc))
    name = type(exc).__qualname__
    return f"{name}: {text}" if text else name
