"""The one place that reads the OpenTelemetry SDK's private span and batch-processor fields.

The hot path copies a few fields from every span on the application's thread; the SDK's public
properties copy whole mappings to do it. What is read privately is read here, with the public
property as the fallback, so that an SDK release that renames a field costs speed, not
correctness, and a reviewer has one file to check against a new SDK (``pyproject.toml`` bounds
the SDK version, and CI also runs the suite against the newest release). The batch span
processor's queue is reached here too (:func:`replace_batch_queue`), so that what it drops can
be counted; when the SDK's layout differs it says so and nothing is replaced.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler, _get_from_env_or_default

__all__ = [
    "end_fields",
    "replace_batch_queue",
    "sampler_from_env",
    "span_attributes",
    "start_fields",
]


def span_attributes(span: Any) -> Any:
    """The span's attributes as a plain mapping, read without the public property's copies.

    ``span.attributes`` wraps the SDK's ``BoundedAttributes`` in a ``MappingProxyType`` whose
    every ``get`` runs two Python-level calls; on the application's thread that adds up. The
    SDK's private ``_attributes._dict`` is read when present, the public property otherwise.
    """
    bounded = getattr(span, "_attributes", None)
    plain = getattr(bounded, "_dict", None)
    if isinstance(plain, dict):
        return plain
    return dict(span.attributes or {})


def start_fields(span: Any) -> tuple[Any, Any, int | None]:
    """``(attributes, context, start_time)`` of a started span.

    The SDK span's private fields are read directly (each public property is a Python call on
    the caller's thread); any other span object goes through the public API.
    """
    try:
        return span._attributes._dict, span._context, span._start_time
    except AttributeError:
        return span_attributes(span), span.context, span.start_time


def end_fields(span: Any) -> tuple[Any, Any, Any, int | None, int | None, Any]:
    """``(attributes, context, events, start_time, end_time, status)`` of an ended span."""
    try:
        return (
            span._attributes._dict,
            span._context,
            span._events,
            span._start_time,
            span._end_time,
            span._status,
        )
    except AttributeError:
        return (
            span_attributes(span),
            span.context,
            span.events,
            span.start_time,
            span.end_time,
            span.status,
        )


def sampler_from_env() -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` name (the SDK's default
    when neither is set), parsed by the SDK's own private reader."""
    return _get_from_env_or_default()


def replace_batch_queue(
    processor: BatchSpanProcessor, make: Callable[[int], deque[Any]]
) -> deque[Any] | None:
    """Swap the (empty) queue of *processor*'s SDK batcher for ``make(max_queue_size)``.

    The SDK keeps ended spans in ``_batch_processor._queue``, a ``deque`` bounded by
    ``max_queue_size`` that silently evicts its oldest span when full; its worker thread reads
    the attribute afresh on every pass, so a replacement made before the first span is used
    from then on. Returns the new queue, or ``None`` (nothing replaced) when the SDK no longer
    has that layout.
    """
    batcher = getattr(processor, "_batch_processor", None)
    queue = getattr(batcher, "_queue", None)
    if not isinstance(queue, deque) or queue.maxlen is None or queue:
        return None
    replacement = make(queue.maxlen)
    batcher._queue = replacement  # type: ignore[union-attr]
    return replacement
