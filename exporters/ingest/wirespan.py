"""A span decoded from the wire, in the shape the history's capture reads: no SDK span between.

The in-process processor turns an SDK span into a writer event with
:func:`exporters.history.capture.capture_start`/:func:`~exporters.history.capture.capture_end`,
which read the span's fields through :mod:`exporters.sdk_internals` (``_attributes._dict``,
``_context``, ``_start_time``, ``_end_time``, ``_events``, ``_status``). :class:`WireSpan` holds
exactly those fields as plain values, so ingest hands the processor's ``on_start``/``on_end`` an
object that costs one small allocation to build and takes capture's fast path: the very same
capture functions make the very same events, without building an SDK ``ReadableSpan`` (its
context, status and event objects, and the public properties' copies) for every span received.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["WireContext", "WireEvent", "WireSpan", "WireStatus"]


class WireContext(NamedTuple):
    """The span context fields capture reads."""

    trace_id: int
    span_id: int
    trace_flags: int


class WireEvent(NamedTuple):
    """A span event (an exception or a log line) as capture's decoding reads it."""

    name: str
    attributes: dict[str, Any]
    timestamp: int | None


class WireStatus(NamedTuple):
    """The span status fields capture reads."""

    description: str | None


class WireSpan:
    """One received span's fields, laid out as the SDK span's that capture reads.

    Args:
        attributes: the span's cleaned attributes.
        context: its trace id, span id and trace flags.
        start_time: its start (nanoseconds since the epoch), or None.
        end_time: its end, or None (a start signal's end is its start).
        events: its cleaned events (empty when there are none).
        status: its status description.
    """

    __slots__ = ("_context", "_dict", "_end_time", "_events", "_start_time", "_status")

    def __init__(
        self,
        attributes: dict[str, Any],
        context: WireContext,
        start_time: int | None,
        end_time: int | None,
        events: tuple[WireEvent, ...],
        status: WireStatus,
    ) -> None:
        self._dict = attributes
        self._context = context
        self._start_time = start_time
        self._end_time = end_time
        self._events = events
        self._status = status

    @property
    def _attributes(self) -> WireSpan:
        """Where capture looks for the attribute dict (``_attributes._dict``, as the SDK's
        ``BoundedAttributes`` keeps it): the span itself, which holds it in ``_dict``."""
        return self

    @property
    def attributes(self) -> dict[str, Any]:
        """The cleaned attributes."""
        return self._dict

    @property
    def context(self) -> WireContext:
        """The trace id, span id and trace flags."""
        return self._context

    @property
    def start_time(self) -> int | None:
        """The start, in nanoseconds since the epoch."""
        return self._start_time

    @property
    def end_time(self) -> int | None:
        """The end, in nanoseconds since the epoch."""
        return self._end_time

    @property
    def events(self) -> tuple[WireEvent, ...]:
        """The cleaned events."""
        return self._events

    @property
    def status(self) -> WireStatus:
        """The status description."""
        return self._status
