"""Span timing that a stepped wall clock cannot make negative.

The OpenTelemetry SDK stamps a span's start and end with the wall clock, so a clock stepped back
mid-span (NTP, a VM resumed, an operator) gives an end before the start. :class:`SpanClock`
anchors the start on the wall clock once and measures the elapsed time on the process's
monotonic clock, so the end it gives is never before the start: runs and steps pass both to
the span explicitly.
"""

from __future__ import annotations

import time

__all__ = ["SpanClock"]


class SpanClock:
    """A span's start (wall clock, ns since the epoch) and an end that is never before it."""

    __slots__ = ("_started", "start_ns")

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self._started = time.monotonic_ns()

    def end_ns(self) -> int:
        """The start plus the monotonic time elapsed since: the span's end."""
        return self.start_ns + (time.monotonic_ns() - self._started)
