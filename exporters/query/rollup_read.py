"""Summing the rollups over a window: the fast reader of stats.

:func:`from_rollups` reads a window's whole weeks, days, quarter days and hours from
``workflow_rollup`` and ``workflow_step_rollup`` (:mod:`exporters.db.rollups`; the longest
periods that fit, :func:`period_ranges`) and the partial hours at its edges, the runs still
active and their running attempts from the base tables, into the tallies of
:mod:`exporters.query.tally`: counts and failures per error type stay exact, percentiles come
from duration buckets (within 4.5 %), and a trend whose interval is a whole number of hours
sums periods into intervals.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, case, cast, func, literal, select, text, union_all
from sqlalchemy.engine import Connection

from exporters.db import rollups
from exporters.db.rollups import SPANS
from exporters.db.schema import (
    workflow_history,
    workflow_rollup,
    workflow_step_history,
    workflow_step_rollup,
)
from exporters.query.tally import (
    BUCKET_VALUES,
    COMPLETED_WORDS,
    EPOCH,
    MEDIAN_SAMPLE_RUNS,
    Runs,
    StepCounts,
    Steps,
    Trend,
    count_attempts,
    count_runs,
    label_of,
)
from instrumentation.attributes import StepStatus

__all__ = ["EXACT_BELOW_RUNS", "from_rollups", "period_ranges"]

EXACT_BELOW_RUNS = MEDIAN_SAMPLE_RUNS
"""Below this many runs in the window, stats read the base tables (exact) even where rollups
exist; from this many on they read the rollups."""

_H, _S = workflow_history.c, workflow_step_history.c
_JOINED = workflow_history.join(workflow_step_history, _S.run_id == _H.run_id)
_HOUR = dt.timedelta(hours=1)
_PG_WORK_MEM = "64MB"  # for the rest of the reader's transaction only (SET LOCAL)


def _hours(when: dt.datetime) -> tuple[int, bool]:
    """Whole hours from the epoch to *when*, and whether *when* is on the hour."""
    whole, rest = divmod(when - EPOCH, _HOUR)
    return whole, not rest


def period_ranges(first: int, last: int, spans: Sequence[int]) -> list[tuple[int, int, int]]:
    """The hours ``[first, last)`` as (span in s, first period, end period) ranges, each part
    in the longest of *spans* (ascending, seconds, the first an hour) whose whole periods fit:
    weeks in the middle, days and then hours towards the edges."""

    def cover(low: int, high: int, level: int) -> list[tuple[int, int, int]]:
        if low >= high:
            return []
        span = spans[level]
        if level == 0:
            return [(span, low // span, high // span)]
        start, end = -(-low // span), high // span
        if start >= end:
            return cover(low, high, level - 1)
        middle = [(span, start, end)]
        return cover(low, start * span, level - 1) + middle + cover(end * span, high, level - 1)

    return cover(first * 3600, last * 3600, len(spans) - 1)


def _spans_of(every_s: int | None) -> list[int]:
    """The rollup periods a trend of intervals *every_s* long may sum: those its intervals
    hold whole (all of them without a trend)."""
    return [span for span in SPANS if every_s is None or not every_s % span]


def _timed(runs: Any) -> Any:
    """A run cell's bucket where its duration counts (a completed run), else one bucket for
    all: the other statuses' cells group into one row each."""
    completed = runs.status.in_(COMPLETED_WORDS)
    return case((completed, runs.bucket), else_=rollups.NO_DURATION).label("bucket")


def _total(column: Any) -> Any:
    """``SUM(column)`` as a ``BIGINT`` (PostgreSQL's sum of bigints is a numeric, which the
    driver would turn into a slower ``Decimal`` per cell)."""
    return cast(func.sum(column), BigInteger)


def _cells(
    conn: Connection, table: Any, periods: list[tuple[int, int, int]], workflow: str | None
) -> list[Any]:
    """*table*'s cells in *periods* (of :func:`period_ranges`), of one *workflow* or all, as the
    sources to group: on PostgreSQL one ``UNION ALL`` of a primary-key range per period (one
    hash aggregate: half the time of a query per range), elsewhere a source per range
    (SQLite sorts to group, and sorting them all at once costs more than merging in Python)."""
    ranges = []
    for span, low, high in periods:
        where = [table.c.span_s == span, table.c.period >= low, table.c.period < high]
        if workflow is not None:
            where.append(table.c.workflow_name == workflow)
        ranges.append(select(table).where(*where))
    if not ranges:
        return []
    if conn.dialect.name == "postgresql":
        return [union_all(*ranges).subquery("cells")]
    return [r.subquery("cells") for r in ranges]


def from_rollups(
    conn: Connection,
    since: dt.datetime,
    until: dt.datetime,
    workflow: str | None,
    trend: Trend | None,
    insist: bool,
) -> tuple[Runs, defaultdict[str, Steps]] | None:
    """The window's outcomes from the rollups over its whole days and hours and the base
    tables over the partial hours at its edges; ``None`` (read the base tables) when the window
    holds no whole hour or, unless *insist*, fewer than :data:`EXACT_BELOW_RUNS` runs."""
    first, on_hour = _hours(since)
    first += not on_hour
    last, _ = _hours(until)
    if first >= last and not insist:
        return None
    if first < last:
        edges = [(since, EPOCH + first * _HOUR), (EPOCH + last * _HOUR, until)]
    else:
        edges = [(since, until)]
    runs, steps = Runs(), defaultdict[str, Steps](Steps)
    if conn.dialect.name == "postgresql":  # sort a window's cells in memory, not on disk,
        conn.execute(text(f"SET LOCAL work_mem = '{_PG_WORK_MEM}'"))
        # and in this process: a few thousand cells a period range, which parallel workers
        # only slow down (their start and the merge of their sorted halves: +15 % at 7 days)
        conn.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    # The totals from the longest periods that fit; a trend's intervals, in a query of their
    # own, from the periods they hold whole (hours for an hourly trend).
    for source in _cells(conn, workflow_rollup, period_ranges(first, last, SPANS), workflow):
        r = source.c
        keys: list[Any] = [r.workflow_name, r.status, _timed(r)]
        query: Any = select(*keys, _total(r.runs), func.max(r.max_ms)).group_by(*keys)
        for name, status, bucket, n, longest in conn.execute(query).all():
            value = None if bucket < 0 else BUCKET_VALUES[bucket]
            top = None if longest is None or value is None else float(longest)
            runs.add(label_of(name), status, value, n, top)
    if trend is not None:
        every_s = int(trend.every.total_seconds())
        periods = period_ranges(first, last, _spans_of(every_s))
        one_each = all(span == every_s for span, _, _ in periods)  # a period is an interval
        for source in _cells(conn, workflow_rollup, periods, workflow):
            r = source.c
            interval = ((r.period * r.span_s) // every_s).label("interval")
            if one_each:  # each cell is its key's in its interval: nothing to group
                query = select(r.workflow_name, r.status, r.bucket, interval, r.runs, r.max_ms)
            else:
                keys = [r.workflow_name, r.status, _timed(r), interval]
                query = select(*keys, _total(r.runs), func.max(r.max_ms)).group_by(*keys)
            trend.add_cells(conn.execute(query).all())
    if first < last:  # runs still active are not in the rollups: few, through the index
        whole_from, whole_to = EPOCH + first * _HOUR, EPOCH + last * _HOUR
        whole = [_H.started_at >= whole_from, _H.started_at < whole_to]
        if workflow is not None:
            whole.append(_H.workflow_name == workflow)
        active = select(_H.workflow_name, _H.status, _H.started_at)
        for name, status, started in conn.execute(
            active.where(_H.status.in_(rollups.ACTIVE_RUN_STATUSES), *whole)
        ):
            runs.add(label_of(name), status, None)
            if trend is not None:
                trend.add((label_of(name), trend.start_of(started)), status, None)
    edge_windows = []
    for low_at, high_at in edges:
        if low_at >= high_at:
            continue
        window = [_H.started_at >= low_at, _H.started_at < high_at]
        if workflow is not None:
            window.append(_H.workflow_name == workflow)
        edge_windows.append(window)
        count_runs(conn, window, None, trend, runs)
    if runs.count < EXACT_BELOW_RUNS and not insist:
        return None
    counts = StepCounts()
    for source in _cells(conn, workflow_step_rollup, period_ranges(first, last, SPANS), workflow):
        _read_step_cells(conn, source.c, steps, counts)
    if first < last:  # nor are the attempts still running
        running = select(_H.workflow_name, _S.step_index, func.max(_S.step_name), func.count())
        running = running.select_from(_JOINED).where(
            _S.status == rollups.ACTIVE_STEP_STATUS, *whole
        )
        for name, index, step, n in conn.execute(running.group_by(_H.workflow_name, _S.step_index)):
            counts.add(label_of(name), index, rollups.ACTIVE_STEP_STATUS, step, n, None)
    for window in edge_windows:
        count_attempts(conn, window, steps, counts)
    counts.into(steps)
    return runs, steps


def _read_step_cells(
    conn: Connection, cells: Any, steps: defaultdict[str, Steps], counts: StepCounts
) -> None:
    """One source's step cells into *steps* and *counts*. On SQLite in one statement of two
    groupings: the completed attempts' cells (most of a window's) on workflow, step and bucket
    only, the other outcomes (a few cells) on workflow, step, status and error type — grouping
    all on six keys, four of them text, sorted twice as long. PostgreSQL groups them all at
    once. Completed cells are gathered here per step before their buckets become durations."""
    completed = StepStatus.COMPLETED.value
    step = (cells.workflow_name, cells.step_index, cells.step_name)
    outcome = (*step, cells.status, cells.error_type)
    summed = (_total(cells.attempts), func.max(cells.max_ms))
    query: Any
    if conn.dialect.name == "postgresql":  # one scan and one hash aggregate: reading the
        # cells costs it more than grouping them on more keys (a second scan: +12 % at 90 days)
        timed = case((cells.status == completed, cells.bucket), else_=rollups.NO_DURATION)
        query = select(*outcome, timed, *summed).group_by(*outcome, timed)
    else:
        done = select(*step, literal(completed), literal(""), cells.bucket, *summed)
        done = done.where(cells.status == completed).group_by(*step, cells.bucket)
        others = select(*outcome, literal(rollups.NO_DURATION), *summed)
        query = union_all(done, others.where(cells.status != completed).group_by(*outcome))
    per_step: dict[tuple[Any, int, str], list[Any]] = {}  # [{bucket: n}, n, longest]
    for name, index, named, status, error, bucket, n, longest in conn.execute(
        query
    ).all():  # fetched at once: one driver call, not one a row
        if status != completed:
            label = label_of(name)
            if status == StepStatus.FAILED:
                steps[label].failed((index, named), error, n)
            counts.add(label, index, status, named, n, longest)
            continue
        found = per_step.get((name, index, named))
        if found is None:
            per_step[name, index, named] = [{bucket: n}, n, longest]
            continue
        found[0][bucket] = n  # each bucket once per step: grouped by it
        found[1] += n
        if longest is not None and (found[2] is None or longest > found[2]):
            found[2] = longest
    for (name, index, named), (buckets, n, longest) in per_step.items():
        label = label_of(name)
        durations = steps[label].durations[index, named]
        for bucket, in_bucket in buckets.items():
            if bucket >= 0:
                durations[BUCKET_VALUES[bucket]] += in_bucket
        counts.add(label, index, completed, named, n, longest)
