"""Small text formatters for the command line: times, durations, statuses, bars and waterfalls.

Everything user data passes through :class:`rich.text.Text` rather than console markup, so a
value such as ``[REDACTED]`` or a stack trace with brackets prints exactly as stored.
:func:`waterfall_bar` draws one step attempt on a time axis shared by the whole run, so the
bars of a run's steps line up to scale; :func:`progress_bar` draws ``17/23`` as a bar.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from instrumentation import RunStatus, StepStatus

__all__ = [
    "KEY_COLUMN",
    "STATUS_STYLES",
    "Waterfall",
    "compact_table",
    "fit_table",
    "fmt_age",
    "fmt_duration",
    "fmt_rate",
    "fmt_started",
    "fmt_time",
    "log_line",
    "progress_bar",
    "run_duration_ms",
    "status_text",
    "text",
    "truncate",
    "waterfall_bar",
]

STATUS_STYLES: dict[str, str] = {
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "bold red",
    RunStatus.RUNNING: "yellow",
    StepStatus.RETRYING: "yellow",
    RunStatus.PENDING: "dim",
    StepStatus.SKIPPED: "dim",
    RunStatus.CANCELLED: "magenta",
    RunStatus.ABANDONED: "red",
}
"""Console style of each run and step status."""

_ACTIVE = frozenset({RunStatus.RUNNING, RunStatus.PENDING})


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
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_age(since: dt.datetime | None, now: dt.datetime) -> str:
    """How long ago *since* was, as ``12s``, ``3m 04s`` or ``1h 02m`` (whole seconds)."""
    if since is None:
        return ""
    seconds = max(0, int((now - since).total_seconds()))
    return fmt_duration(seconds * 1000) if seconds >= 60 else f"{seconds}s"


def fmt_rate(rate: float | None) -> str:
    """A fraction as a percentage with one decimal (``91.3%``), or ``-`` when unknown."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


def run_duration_ms(
    duration_ms: int | None,
    started_at: dt.datetime | None,
    now: dt.datetime | None = None,
    *,
    status: str,
    completed_at: dt.datetime | None = None,
) -> tuple[float | None, bool]:
    """How long a run (or attempt) took: ``(ms, still_open)``.

    The recorded duration first; for a finished run without one, ``completed_at - started_at``
    (or unknown): only a run still ``running`` or ``pending`` shows the time since its start,
    so a finished run never shows a growing duration.
    """
    if duration_ms is not None:
        return float(duration_ms), False
    if started_at is None:
        return None, False
    if status not in _ACTIVE:
        if completed_at is None:
            return None, False
        return max(0.0, (completed_at - started_at).total_seconds() * 1000), False
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (now - started_at).total_seconds() * 1000), True


def fmt_started(
    values: Sequence[dt.datetime | None], *, with_date: bool, today: dt.date | None = None
) -> list[str]:
    """Start times in UTC for a table column: always the time of day.

    With *with_date* each carries its full date (``2026-11-01 12:00:03``). Without it, a start
    on *today* (UTC; default the current day) is its time of day alone (``12:00:03``) and any
    other carries its month and day (``11-01 12:00:03``), so no date is ever guessed.
    """
    today = today or dt.datetime.now(dt.UTC).date()
    out = []
    for value in values:
        if value is None:
            out.append("")
            continue
        utc = value.astimezone(dt.UTC)
        day = "%Y-%m-%d " if with_date else "" if utc.date() == today else "%m-%d "
        form = day + "%H:%M:%S"
        out.append(utc.strftime(form))
    return out


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


def progress_bar(done: int, total: int, width: int = 10) -> Text:
    """``███░░░░░░░ 3/23``: *done* of *total* as a bar of *width* cells and a count."""
    filled = min(width, round(width * done / total)) if total > 0 else 0
    bar = Text("█" * filled, style="green")
    bar.append("░" * (width - filled), style="dim")
    bar.append(f" {done}/{total}")
    return bar


class Waterfall:
    """A :func:`waterfall_bar` drawn at the width its table column gives it.

    It asks for ``min_width`` to ``max_width`` cells; rich decides, and the bar is drawn to
    scale in whatever width the column gets, so no width is computed by hand.
    """

    def __init__(
        self,
        start_ms: float,
        end_ms: float | None,
        total_ms: float,
        status: str,
        *,
        min_width: int = 10,
        max_width: int = 50,
    ) -> None:
        self.start_ms, self.end_ms, self.total_ms, self.status = start_ms, end_ms, total_ms, status
        self.min_width, self.max_width = min_width, max_width

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self.min_width, self.max_width).with_maximum(options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(1, options.max_width)
        yield waterfall_bar(self.start_ms, self.end_ms, self.total_ms, width, self.status)


def waterfall_bar(
    start_ms: float, end_ms: float | None, total_ms: float, width: int, status: str
) -> Text:
    """One step attempt on a run's time axis of *width* cells spanning *total_ms*.

    The bar starts at *start_ms* and ends at *end_ms* (both from the run's start); a skipped
    step is a ``○`` at its start, an attempt still open (*end_ms* ``None``) ends in ``▶``.
    Every attempt gets at least one cell, so short steps stay visible.
    """
    if total_ms <= 0 or width < 1:
        return Text("")
    scale = width / total_ms
    first = min(width - 1, max(0, round(start_ms * scale)))
    style = STATUS_STYLES.get(status, "")
    bar = Text(" " * first)
    if status == StepStatus.SKIPPED:
        bar.append("○", style="dim")
    elif end_ms is None:
        bar.append("█" * max(0, width - 1 - first) + "▶", style=style)
    else:
        bar.append("█" * max(1, round((end_ms - start_ms) * scale)), style=style)
    bar.truncate(width)
    bar.pad_right(width - bar.cell_len)
    return bar


KEY_COLUMN: dict[str, Any] = {"no_wrap": True, "overflow": "ellipsis"}
"""Column options of every table cell: one line per row, an ellipsis where text is cut."""


_UNBOUNDED = 100_000  # a width no table reaches: measures a table's natural width


def compact_table(**options: Any) -> Table:
    """A table with a rule under its header, no outer edge and two spaces between columns."""
    return Table(
        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, **options
    )


def fit_table(table: Table, console: Console) -> Table:
    """Let the ``ratio`` columns share the width the others leave when *table* is too wide.

    Rich then gives the columns without a ratio their natural width (at least their
    ``min_width``) and divides the rest between the ratio columns, which end in an ellipsis.
    """
    natural = console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum
    table.expand = natural > console.width
    return table


def log_line(entry: Any) -> Text:
    """``<at> <SEVERITY> <logger>: <message>`` from one stored log line, styled by severity."""
    if not isinstance(entry, dict):
        return text(entry)
    severity = str(entry.get("severity") or "").upper()
    head = " ".join(str(v) for v in (entry.get("at"), severity, entry.get("logger")) if v)
    message = str(entry.get("message") or "")
    style = "red" if severity in ("ERROR", "CRITICAL") else "yellow" if severity else ""
    return text(f"{head}: {message}" if head else message, style)
