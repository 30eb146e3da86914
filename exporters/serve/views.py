"""What the templates draw: formatted times and durations, status classes and chart geometry.

Nothing here produces markup: the functions return strings and numbers, and the Jinja2
templates (autoescaped) place them, so every stored value reaches the page as text. Charts are
SVG drawn on the server from the geometry computed here (:func:`waterfall`, :func:`hbars`,
:func:`outcome_bar`), with their labels as HTML text that wraps rather than SVG text that
would be clipped; colours come from CSS classes chosen from a fixed list
(:func:`status_class`), never from stored values, and no ``style`` attribute is written, so
the page needs no ``'unsafe-inline'``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from exporters.db.json import dumps_text
from exporters.query.records import RunDetail, StepRecord
from instrumentation.attributes import ACTIVE_RUN_STATUSES, RunStatus, StepStatus

__all__ = [
    "TREND_HEIGHT",
    "Bar",
    "TrendBar",
    "WaterfallRow",
    "fmt_duration",
    "fmt_rate",
    "fmt_time",
    "hbars",
    "outcome_bar",
    "pretty_json",
    "safe_link",
    "status_class",
    "step_error",
    "trend_bars",
    "waterfall",
]

_STATUSES = frozenset(s.value for s in RunStatus) | frozenset(s.value for s in StepStatus)
_OUTCOMES = (
    RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.ABANDONED,
    RunStatus.RUNNING,
)  # fmt: skip
"""The outcome bar's segments, in order (each a field of that name of the totals)."""
CHART_WIDTH = 600
HBAR_WIDTH = 340
"""The length of a horizontal bar chart's longest bar (SVG user units; the page scales it)."""


def status_class(status: object) -> str:
    """``status-failed`` for a known status, ``status-other`` for anything else."""
    return f"status-{status}" if status in _STATUSES else "status-other"


def fmt_time(value: dt.datetime | None) -> str:
    """``2026-11-01 12:00:03`` in UTC, or an empty string."""
    return "" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(ms: float | None) -> str:
    """``850ms``, ``12.3s``, ``3m 04s`` or ``1h 02m``; empty when unknown."""
    if ms is None:
        return ""
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    minutes, secs = divmod(round(ms / 1000), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_rate(rate: float | None) -> str:
    """A fraction as a percentage with one decimal, or ``-``."""
    return "-" if rate is None else f"{rate * 100:.1f}%"


_STEP_FAILED = re.compile(r"^step '[^']*' failed: ")


def step_error(message: str | None, width: int = 160) -> str:
    """A run's error without the ``step '...' failed:`` prefix (the step has its column)."""
    return _STEP_FAILED.sub("", message or "")[:width]


def pretty_json(value: Any) -> str:
    """*value* (a step's recorded input or output) as indented JSON text for a ``<pre>``."""
    return dumps_text(value, indent=2, sort_keys=True)


def safe_link(url: object) -> str | None:
    """*url* if it is an absolute http(s) link (a ``javascript:`` URL is never a link)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def elapsed_ms(
    duration_ms: int | None, started_at: dt.datetime | None, now: dt.datetime
) -> tuple[float | None, bool]:
    """The recorded duration, else the time since the start: ``(ms, still_open)``."""
    if duration_ms is not None:
        return float(duration_ms), False
    if started_at is None:
        return None, False
    return max(0.0, (now - started_at).total_seconds() * 1000), True


@dataclasses.dataclass(frozen=True, slots=True)
class WaterfallRow:
    """One step attempt on the run's time axis (SVG user units; ``open`` still running)."""

    step: StepRecord
    x: float
    width: float
    y: float
    open: bool
    css: str
    duration: str


def waterfall(
    detail: RunDetail, now: dt.datetime, width: float = CHART_WIDTH, row: float = 18
) -> tuple[list[WaterfallRow], str]:
    """The run's attempts as bars on one time axis, and the axis length as text.

    The axis spans the run and every attempt; a run still in progress extends to *now*. Every
    attempt gets at least two units, so short steps stay visible; skipped steps are drawn as
    dots by the template.
    """
    starts = [s.started_at for s in detail.steps if s.started_at is not None]
    starts += [detail.started_at] if detail.started_at else []
    ends = [s.completed_at or s.started_at for s in detail.steps]
    ends += [detail.completed_at, now if detail.status in ACTIVE_RUN_STATUSES else None]
    known = [end for end in ends if end is not None]
    if not starts or not known:
        origin, total = None, 0.0
    else:
        origin = min(starts)
        total = max(1.0, (max(known) - origin).total_seconds() * 1000)
    rows: list[WaterfallRow] = []
    for i, step in enumerate(detail.steps):
        ms, still_open = elapsed_ms(step.duration_ms, step.started_at, now)
        still_open = still_open and step.status == StepStatus.RUNNING
        x, bar = 0.0, 0.0
        if origin is not None and step.started_at is not None:
            x = (step.started_at - origin).total_seconds() * 1000 / total * width
            bar = width - x if still_open else (ms or 0) / total * width
        x = min(max(0.0, x), width - 2)
        text = fmt_duration(ms) + ("…" if still_open else "")
        rows.append(
            WaterfallRow(step, round(x, 1), round(max(2.0, min(bar, width - x)), 1), i * row,
                         still_open, status_class(step.status), text)
        )  # fmt: skip
    return rows, fmt_duration(total)


@dataclasses.dataclass(frozen=True, slots=True)
class Bar:
    """One labelled bar of a horizontal bar chart (``width`` in SVG user units out of
    :data:`HBAR_WIDTH`)."""

    label: str
    value: float
    text: str
    width: float
    y: float
    css: str


def hbars(
    items: Sequence[tuple[str, float | None, str]],
    *,
    css: str = "bar",
    width: float = HBAR_WIDTH,
    row: float = 18,
) -> list[Bar]:
    """``(label, value, value text)`` as bars scaled to the largest value (``None`` is 0)."""
    top = max((v or 0.0 for _, v, _ in items), default=0.0)
    return [
        Bar(label, value or 0.0, text, round((value or 0.0) / top * width, 1) if top else 0.0,
            i * row, css)
        for i, (label, value, text) in enumerate(items)
    ]  # fmt: skip


def outcome_bar(totals: Any, width: float = CHART_WIDTH) -> list[Bar]:
    """A workflow's runs by outcome as consecutive segments of one bar (``y`` is the x offset)."""
    parts = [(status.value, float(getattr(totals, status.value))) for status in _OUTCOMES]
    total = sum(value for _, value in parts)
    bars, at = [], 0.0
    for name, value in parts:
        if value and total:
            w = value / total * width
            bars.append(Bar(name, value, f"{value:.0f} {name}", round(w, 1), round(at, 1),
                            status_class(name)))  # fmt: skip
            at += w
    return bars


@dataclasses.dataclass(frozen=True, slots=True)
class TrendBar:
    """One interval of a trend chart: a column of runs whose failed part is drawn apart (SVG
    user units; ``y`` counts down from the top)."""

    x: float
    width: float
    runs_y: float
    runs_height: float
    failed_y: float
    failed_height: float
    title: str


TREND_HEIGHT = 80
"""The trend chart's bar area height (SVG user units)."""


def trend_bars(points: Sequence[Any], width: float = CHART_WIDTH) -> list[TrendBar]:
    """A workflow's trend (``WorkflowStats.trend``) as one column per interval, scaled to the
    busiest interval; the title names the interval, its runs, failures and p50/p95."""
    if not points:
        return []
    busiest = max((p.runs for p in points), default=0) or 1
    step = width / len(points)
    bars = []
    for n, point in enumerate(points):
        runs_h = TREND_HEIGHT * point.runs / busiest
        failed_h = TREND_HEIGHT * point.failed / busiest
        title = (
            f"{fmt_time(point.start)} UTC: {point.runs} runs, {point.failed} failed, "
            f"p50 {fmt_duration(point.p50_ms) or '-'}, p95 {fmt_duration(point.p95_ms) or '-'}"
        )
        column = (round(n * step, 1), round(max(step - 1, 0.5), 1))
        runs = (round(TREND_HEIGHT - runs_h, 1), round(runs_h, 1))
        failed = (round(TREND_HEIGHT - failed_h, 1), round(failed_h, 1))
        bars.append(TrendBar(*column, *runs, *failed, title))
    return bars
