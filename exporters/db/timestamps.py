"""Timestamps on the writer's hot path: span nanoseconds to datetimes and to text, cached.

A batch's rows carry timestamps from the same few seconds over and over, and building a
datetime or formatting one from scratch was a tenth of the writer's work. Each conversion here
caches the whole second (a datetime or its ``YYYY-MM-DD HH:MM:SS`` text, a few thousand
entries at most) and adds only the microseconds: :func:`to_datetime` (nanoseconds → aware UTC
datetime, for the rows), :func:`iso_text` (nanoseconds → ISO 8601 with ``+00:00``, for the
metadata JSON) and :func:`sqlite_text` (aware UTC datetime → the naive UTC text SQLite stores).
``tests/test_timestamps.py`` pins each to plain datetime arithmetic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

__all__ = ["EPOCH", "iso_text", "sqlite_text", "to_datetime"]

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""The Unix epoch, aware, in UTC."""

_CACHE_LIMIT = 4096
_SECOND_DATETIMES: dict[int, dt.datetime] = {}
_ISO_SECONDS: dict[int, str] = {}
_SQLITE_SECONDS: dict[int, str] = {}
_T = TypeVar("_T")


def _per_second(cache: dict[int, _T], second: int, make: Callable[[int], _T]) -> _T:
    """``make(second)``, remembered in *cache* (emptied when it reaches its limit)."""
    value = cache.get(second)
    if value is None:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        value = cache[second] = make(second)
    return value


def _second_datetime(second: int) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=second)


def _iso_head(second: int) -> str:
    return _second_datetime(second).isoformat()[:19]


def _sqlite_head(second: int) -> str:
    return _second_datetime(second).isoformat(" ")[:19]


def to_datetime(ns: int | None) -> dt.datetime | None:
    """Nanoseconds since the epoch → timezone-aware UTC datetime (microsecond precision)."""
    if not ns:
        return None
    second, micros = divmod(ns // 1000, 1_000_000)
    return _per_second(_SECOND_DATETIMES, second, _second_datetime) + dt.timedelta(0, 0, micros)


def iso_text(ns: int | None) -> str | None:
    """``to_datetime(ns).isoformat()``, without building the datetime."""
    if not ns:
        return None
    second, micros = divmod(ns // 1000, 1_000_000)
    head = _per_second(_ISO_SECONDS, second, _iso_head)
    return f"{head}.{micros:06d}+00:00" if micros else f"{head}+00:00"


def sqlite_text(value: dt.datetime) -> str:
    """``YYYY-MM-DD HH:MM:SS.ffffff`` of an aware UTC datetime (what the UTC timestamp type
    stores on SQLite)."""
    delta = value - EPOCH
    head = _per_second(_SQLITE_SECONDS, delta.days * 86_400 + delta.seconds, _sqlite_head)
    return f"{head}.{delta.microseconds:06d}"
