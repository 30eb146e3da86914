"""Small text formatters for the command line: times, durations, statuses, truncation.

Everything user data passes through :class:`rich.text.Text` rather than console markup, so a
value such as ``[REDACTED]`` or a stack trace with brackets prints exactly as stored.
"""

from __future__ import annotations

import datetime as dt

from rich.text import Text

__all__ = [
    "STATUS_STYLES",
    "fmt_duration",
    "fmt_time",
    "run_duration_ms",
    "status_text",
    "text",
    "truncate",
]

STATUS_STYLES = {
    "completed": "green",
    "failed": "bold red",
    "running": "yellow",
    "retrying": "yellow",
    "pending": "dim",
    "skipped": "dim",
    "cancelled": "magenta",
    "abandoned": "red",
}
"""Console style of each run and step status."""


def fmt_time(value: dt.datetime | None) -> str:
    """``2026-11-01 12:00:03`` in UTC, or an empty string."""
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(ms: int | float | None) -> str:
    """``850ms``, ``12.3s``, ``3m 04s`` or ``1h 02m``; empty when unknown."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def run_duration_ms(
    duration_ms: int | None, started_at: dt.datetime | None, now: dt.datetime | None = None
) -> tuple[float | None, bool]:
    """The recorded duration, else the time elapsed since the start: ``(ms, still_open)``."""
    if duration_ms is not None:
        return float(duration_ms), False
    if started_at is None:
        return None, False
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (now - started_at).total_seconds() * 1000), True


def truncate(value: str | None, width: int) -> str:
    """The first line of *value*, cut to *width* characters with an ellipsis."""
    if not value:
        return ""
    first = value.strip().splitlines()[0] if value.strip() else ""
    return first if len(first) <= width else first[: width - 1] + "…"


def status_text(status: str) -> Text:
    """*status* styled by :data:`STATUS_STYLES`."""
    return Text(status, style=STATUS_STYLES.get(status, ""))


def text(value: object, style: str = "") -> Text:
    """*value* as literal text (never parsed as console markup)."""
    return Text("" if value is None else str(value), style=style)
