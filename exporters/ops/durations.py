"""The one duration grammar of the command line: ``--since``, ``--until`` and ``--older-than``.

A duration is a positive number, optionally with a decimal part, and an optional unit: ``s``
(seconds, the default), ``m`` (minutes), ``h`` (hours), ``d`` (days) or ``w`` (weeks), in
either case, with optional spaces around and between them — ``90``, ``30s``, ``15m``,
``1.5h``, ``7d``, ``2w``. Zero, negative numbers, exponents, other units (``y``, ``min``) and
anything longer than :data:`MAX_DURATION` (about 1,000 years, so that counting back from now
stays in the calendar) are rejected with a :class:`ValueError` whose message lists the
accepted forms. :func:`parse_duration` reads the grammar; :func:`duration_text` writes a
timedelta back in it; :func:`parse_when` reads a time as ``--since``/``--until`` (and ``flowtel
serve``'s ``since``/``until``) take it: an ISO 8601 date or time, or a duration back from now.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

__all__ = ["DURATION_FORMS", "MAX_DURATION", "duration_text", "parse_duration", "parse_when"]

DURATION_FORMS = (
    "a positive number with an optional unit s, m, h, d or w (seconds if none), such as 90, "
    "30s, 15m, 1.5h, 7d or 2w"
)
"""What a duration may look like, as error messages and help texts say it."""
MAX_DURATION = dt.timedelta(days=365_000)
"""The longest duration accepted (about 1,000 years)."""

_GRAMMAR = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*", re.ASCII | re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_MICROSECONDS = Decimal(1_000_000)


def parse_duration(text: str) -> dt.timedelta:
    """Parse *text* in the duration grammar (see the module docstring) into a timedelta.

    Decimals are exact to the microsecond: ``1.5h`` is 90 minutes, ``0.25s`` 250 ms.

    Raises:
        ValueError: *text* is not a duration, is zero or rounds to zero, or is longer than
            :data:`MAX_DURATION`; the message says what is accepted.
    """
    match = _GRAMMAR.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: give {DURATION_FORMS}")
    micros = Decimal(match[1]) * _SECONDS[match[2].lower()] * _MICROSECONDS
    if micros > MAX_DURATION // dt.timedelta(microseconds=1):
        raise ValueError(f"{text!r} is too long: the longest duration is {MAX_DURATION.days}d")
    delta = dt.timedelta(microseconds=int(micros.to_integral_value()))
    if delta <= dt.timedelta(0):
        raise ValueError(f"{text!r} is not a positive duration: give {DURATION_FORMS}")
    return delta


def duration_text(delta: dt.timedelta) -> str:
    """*delta* in the grammar, in the largest whole unit: ``10m``, ``2h``, ``1d``, ``90s``.

    Whole weeks are written in days (``14d``); a fraction of a second keeps its decimals
    (``0.5s``).
    """
    micros = delta // dt.timedelta(microseconds=1)
    if micros % 1_000_000:
        return f"{Decimal(micros) / _MICROSECONDS}s"
    seconds = micros // 1_000_000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_when(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """Parse an ISO 8601 date or time (UTC unless it has an offset) or a duration before *now*.

    Durations follow :func:`parse_duration` (``90``, ``30m``, ``1.5h``,
    ``7d``, ``2w``). An ISO form wins where both could apply: ``20261101`` is 1 November 2026,
    not 20,261,101 seconds.

    Raises:
        ValueError: *text* is neither, or a duration longer than
            :data:`MAX_DURATION`; the message says what is accepted.
    """
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        pass
    else:
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    try:
        return (now or dt.datetime.now(dt.UTC)) - parse_duration(text)
    except ValueError as exc:
        if str(exc).startswith(f"{text!r} is too long"):
            raise
        raise ValueError(
            f"{text!r} is not a time: give an ISO 8601 date or time such as 2026-11-01 or "
            "2026-11-01T08:00+02:00 (UTC unless it has an offset), or a duration back from "
            f"now: {DURATION_FORMS}"
        ) from None
