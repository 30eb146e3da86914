"""Span and trace ids from flowtel's private random generator.

The SDK's ``RandomIdGenerator`` draws from the global ``random`` module, so an application that
calls ``random.seed()`` gets the same span ids again — and step rows, keyed by span id, would
overwrite each other. :class:`PrivateRandomIdGenerator` draws from the private generator that
run ids use (seeded from the operating system, reseeded after ``fork``); like the SDK's, it
never releases the GIL.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator

from instrumentation._ids import ID_RANDOM

__all__ = ["PrivateRandomIdGenerator"]


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
