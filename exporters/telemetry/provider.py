"""The tracer provider flowtel builds: private span ids, span limits that fit flowtel's own.

The SDK's ``RandomIdGenerator`` draws from the global ``random`` module, so an application that
calls ``random.seed()`` gets the same span ids again. :class:`PrivateRandomIdGenerator` draws
from the private generator that run ids use (seeded from the operating system, reseeded after
``fork``); like the SDK's, it never releases the GIL. :func:`span_limits` returns the
``SpanLimits`` that never cut what flowtel has already bounded. Both are public so that an
application that builds its own provider gets the same protections;
:func:`global_provider` returns the process's SDK provider, installing one if there is none.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Sampler

from instrumentation._ids import ID_RANDOM
from instrumentation.limits import Limits, get_limits

__all__ = ["PrivateRandomIdGenerator", "global_provider", "span_limits"]


class PrivateRandomIdGenerator(IdGenerator):
    """Random span and trace ids that ``random.seed()`` cannot make repeat."""

    def generate_span_id(self) -> int:
        """A random non-zero 64-bit span id."""
        span_id = ID_RANDOM.getrandbits(64)
        while span_id == trace.INVALID_SPAN_ID:
            span_id = ID_RANDOM.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        """A random non-zero 128-bit trace id."""
        trace_id = ID_RANDOM.getrandbits(128)
        while trace_id == trace.INVALID_TRACE_ID:
            trace_id = ID_RANDOM.getrandbits(128)
        return trace_id


def span_limits(limits: Limits | None = None) -> SpanLimits:
    """OpenTelemetry ``SpanLimits`` matching flowtel's limits (default: the process-wide ones).

    Attribute values may hold the whole context JSON, and a run span one attribute per
    context key besides flowtel's own, so the SDK never silently cuts or evicts what flowtel
    has already bounded, while other instrumentation's values stay bounded too. Pass the result
    as ``TracerProvider(span_limits=...)``.
    """
    bound = limits or get_limits()
    longest = max(bound.context_bytes, bound.stacktrace_bytes, bound.message_bytes)
    return SpanLimits(
        max_span_attributes=max(128, bound.context_attributes + 32),
        max_attribute_length=longest,
    )


def global_provider(resource: Resource, sampler: Sampler) -> tuple[TracerProvider, bool]:
    """The global SDK tracer provider and whether this call created it.

    An SDK provider the application installed already is returned as it is (``False``): the
    caller adds to it but must never shut it down. Otherwise a new provider with *resource*,
    *sampler*, :class:`PrivateRandomIdGenerator` and :func:`span_limits` is installed globally.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current, False
    provider = TracerProvider(
        resource=resource,
        sampler=sampler,
        span_limits=span_limits(),
        id_generator=PrivateRandomIdGenerator(),
        shutdown_on_exit=False,
    )
    trace.set_tracer_provider(provider)
    return provider, True
