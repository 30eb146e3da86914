"""Statistics over a time window: per workflow, per step, per device type or context key.

:func:`compute_stats` chooses the reader. Where the database keeps the rollups (revision 0008
on SQLite and PostgreSQL, see :mod:`exporters.db.rollups`), the question suits them (no ``by``,
an ``every`` of whole hours) and the window holds at least :data:`EXACT_BELOW_RUNS` runs, it
sums them (:mod:`exporters.query.rollup_read`: exact counts and failures per error type,
percentiles within 4.5 %); otherwise it reads the base tables (:mod:`exporters.query.tally`:
exact run percentiles, step percentiles over every attempt or a fixed sample of about
:data:`MEDIAN_SAMPLE_RUNS` runs in a busier window). Either way the one message shown per
failing step and error type is that of its latest failure in the window, read through the
status index.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Literal

from sqlalchemy.engine import Connection

from exporters.db.rollups import has_rollups
from exporters.db.schema import workflow_history
from exporters.query.records import StatsReport, WorkflowStats
from exporters.query.rollup_read import EXACT_BELOW_RUNS, from_rollups
from exporters.query.tally import (
    BY_COLUMNS,
    MEDIAN_SAMPLE_RUNS,
    NO_VALUE,
    Runs,
    Steps,
    Trend,
    count_runs,
    count_steps,
    percentile,
    with_examples,
)

__all__ = [
    "BY_COLUMNS",
    "EXACT_BELOW_RUNS",
    "MAX_TREND_POINTS",
    "MEDIAN_SAMPLE_RUNS",
    "NO_VALUE",
    "compute_stats",
    "percentile",
]

MAX_TREND_POINTS = 2000
"""The most intervals a trend may have (``every`` against the window)."""

Source = Literal["auto", "rollups", "base"]

_H = workflow_history.c
_HOUR = dt.timedelta(hours=1)
_MIN_EVERY = dt.timedelta(minutes=1)


def compute_stats(
    conn: Connection,
    *,
    since: dt.datetime,
    until: dt.datetime | None = None,
    workflow: str | None = None,
    by: str | None = None,
    top: int = 5,
    every: dt.timedelta | None = None,
    source: Source = "auto",
) -> StatsReport:
    """Compute the :class:`StatsReport` of the runs started in ``[since, until)``.

    Args:
        conn: a connection to the history database.
        since: the window's start (inclusive; naive means UTC).
        until: the window's end (exclusive; default: now).
        workflow: only this workflow name.
        by: also split each workflow's runs by this column (see :data:`BY_COLUMNS`) or
            context key.
        top: how many failing steps to list per workflow.
        every: also split each workflow's runs into intervals this long (its ``trend``).
        source: ``auto`` reads the rollups where they exist and serve the question (no *by*,
            *every* a whole number of hours) and the window holds at least
            :data:`EXACT_BELOW_RUNS` runs, else the base tables; ``rollups`` or ``base``
            insist on one.

    Raises:
        ValueError: *by* is neither a column nor a plain context key, *top* is negative,
            *every* is under a minute or cuts the window into more than
            :data:`MAX_TREND_POINTS` intervals, or ``source="rollups"`` where the database
            keeps none (MariaDB/MySQL, or before revision 0007) or with *by* or an *every*
            that is not a whole number of hours.
    """
    if top < 0:
        raise ValueError(f"top must be zero or more, not {top}")
    since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    until = until or dt.datetime.now(dt.UTC)
    until = until if until.tzinfo else until.replace(tzinfo=dt.UTC)
    trend = None
    if every is not None:
        if every < _MIN_EVERY:
            raise ValueError(f"every must be at least a minute, not {every}")
        if (until - since) / every > MAX_TREND_POINTS:
            raise ValueError(
                f"every={every} cuts the window into more than {MAX_TREND_POINTS} intervals; "
                "give a longer interval or a shorter window"
            )
        trend = Trend(every)
    in_window = [_H.started_at >= since, _H.started_at < until]
    if workflow is not None:
        in_window.append(_H.workflow_name == workflow)
    counted = None
    if source != "base" and _rollups_serve(conn, by, every, source):
        counted = from_rollups(conn, since, until, workflow, trend, source == "rollups")
    if counted is None:
        trend = None if every is None else Trend(every)
        runs = count_runs(conn, in_window, by, trend)
        steps = count_steps(conn, in_window, since, until, runs.count)
    else:
        runs, steps = counted
    names = sorted(k for k in runs.statuses if isinstance(k, str))
    workflows = [_workflow(name, runs, steps[name], top) for name in names]
    workflows = with_examples(conn, workflows, in_window, since, until)
    if trend is not None:
        workflows = [
            dataclasses.replace(w, trend=trend.points(w.workflow_name, since, until))
            for w in workflows
        ]
    return StatsReport(
        since=since,
        until=until,
        by=by,
        workflows=workflows,
        every_s=None if every is None else int(every.total_seconds()),
    )


def _rollups_serve(
    conn: Connection, by: str | None, every: dt.timedelta | None, source: Source
) -> bool:
    """Whether the rollups can answer; with ``source="rollups"``, raise where they cannot."""
    reason = None
    if by is not None:
        reason = "by= splits read the base tables"
    elif every is not None and every % _HOUR:
        reason = f"every={every} is not a whole number of hours"
    elif not has_rollups(conn):
        reason = (
            f"this {conn.dialect.name} database keeps no rollups (MariaDB/MySQL never do; "
            "SQLite and PostgreSQL from revision 0008: run flowtel db upgrade)"
        )
    if reason is not None and source == "rollups":
        raise ValueError(f"cannot read stats from the rollups: {reason}")
    return reason is None


def _workflow(name: str, runs: Runs, steps: Steps, top: int) -> WorkflowStats:
    groups = [runs.totals(k, k[1]) for k in runs.statuses if isinstance(k, tuple) and k[0] == name]
    return WorkflowStats(
        workflow_name=name,
        totals=runs.totals(name, None),
        steps=steps.steps(),
        top_failing_steps=steps.failing(top),
        groups=sorted(groups, key=lambda g: (-g.runs, g.group or "")),
    )
