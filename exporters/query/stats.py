"""Statistics over a time window: per workflow, per step, per device type or context key.

Where the database keeps the rollups (revision 0008 on SQLite and PostgreSQL, see
:mod:`exporters.db.rollups`) and the window holds at least :data:`EXACT_BELOW_RUNS` runs,
:func:`compute_stats` sums the rollups over the window's whole weeks, days and hours (the
longest periods that fit) and reads only the partial hours at its edges from the base tables:
counts and failures per error type stay exact, percentiles come from duration buckets over every
run and attempt (within 4.5 %), and a trend whose interval is a whole number of hours sums
periods into intervals. The one message shown per failing step and error type is that of its
latest failure in the window, read through the status index on either path.
Otherwise (fewer runs, ``by`` splits, other intervals, MariaDB) it reads the runs started in
``[since, until)`` through the ``started_at`` index (run percentiles are exact, interpolated
like PostgreSQL's ``percentile_cont``), then has the database count their step attempts by
step, outcome and error through the ``run_id`` index (on PostgreSQL through the steps' own
``started_at`` index); step percentiles come from the durations of every run's attempts, or of
a fixed sample of about :data:`MEDIAN_SAMPLE_RUNS` runs in a busier window, so the work stays
bounded. ``by`` splits the runs by a column or a key of the run's context, read with each
dialect's JSON extraction.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import itertools
import math
import re
import typing
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    case,
    cast,
    func,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.engine import Connection

from exporters.db import rollups
from exporters.db.rollups import BUCKET_LOWER_MS, SPANS, bucket_value, has_rollups
from exporters.db.schema import (
    workflow_history,
    workflow_rollup,
    workflow_step_history,
    workflow_step_rollup,
)
from exporters.query.records import (
    FailingStep,
    GroupStats,
    StatsReport,
    StepStats,
    TrendPoint,
    WorkflowStats,
)
from instrumentation.attributes import (
    ACTIVE_RUN_STATUSES,
    FINAL_RUN_STATUSES,
    RunStatus,
    StepStatus,
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

BY_COLUMNS = ("device_type", "host", "server_id", "service_name", "workflow_id")
"""``by`` values read from a column; any other plain key is read from the run's context."""

NO_VALUE = "(none)"
"""The group of runs whose ``by`` value is missing, and the name of unnamed workflows."""

MEDIAN_SAMPLE_RUNS = 2000
"""Above this many runs in the window, step medians come from a sample of about as many."""

EXACT_BELOW_RUNS = MEDIAN_SAMPLE_RUNS
"""Below this many runs in the window, stats read the base tables (exact) even where rollups
exist; from this many on they read the rollups."""

Source = Literal["auto", "rollups", "base"]

MAX_TREND_POINTS = 2000
"""The most intervals a trend may have (``every`` against the window)."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_HOUR = dt.timedelta(hours=1)
_PG_WORK_MEM = "64MB"  # for the rest of the reader's transaction only (SET LOCAL)
_MIN_EVERY = dt.timedelta(minutes=1)
_LEGACY_STATUSES = {"success": RunStatus.COMPLETED.value}  # the old system's word for completed
_COMPLETED_WORDS = (RunStatus.COMPLETED.value, *_LEGACY_STATUSES)
_CONTEXT_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")
_FINISHED = (*sorted(FINAL_RUN_STATUSES), RunStatus.ABANDONED)
_H, _S = workflow_history.c, workflow_step_history.c
_SCRAMBLE, _SAMPLE_SPACE = 7919, 10007  # id * prime % prime: a sample without a period
_SLACK = dt.timedelta(days=1)  # clocks of the hosts that wrote the rows may disagree
_JOINED = workflow_history.join(workflow_step_history, _S.run_id == _H.run_id)
_COUNT_KEYS = (_H.workflow_name, _S.step_index, _S.status)  # few and narrow: a cheap sort
_COUNTED = select(*_COUNT_KEYS, func.max(_S.step_name), func.count(), func.max(_S.duration_ms))
_COUNTED = _COUNTED.select_from(_JOINED).group_by(*_COUNT_KEYS)
_STEP = (_H.workflow_name, _S.step_index, _S.step_name)
_TIMED = select(*_STEP, _S.status, _S.duration_ms).select_from(_JOINED)
_FAILED_KEYS = (*_STEP, _S.error_type)
_FAILED = select(*_FAILED_KEYS, func.count()).select_from(_JOINED).group_by(*_FAILED_KEYS)
_BUCKET_VALUES = tuple(bucket_value(b) for b in range(len(BUCKET_LOWER_MS)))
_IS_FAILED = _S.status == literal(StepStatus.FAILED.value, literal_execute=True)
"""Written into the SQL, not bound: PostgreSQL's status index is partial (``status <>
'completed'``), and a prepared statement's generic plan cannot use it for a bound status."""


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """The *fraction* quantile of an ascending sequence by linear interpolation, or ``None``.

    The same definition as PostgreSQL's ``percentile_cont``: ``percentile(v, 0.5)`` is the
    median, ``percentile(v, 1.0)`` the maximum.

    Raises:
        ValueError: *fraction* is outside 0..1.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _by_expression(by: str) -> ColumnElement[Any]:
    if by in BY_COLUMNS:
        return _H[by]
    if not _CONTEXT_KEY.fullmatch(by):
        raise ValueError(
            f"cannot group by {by!r}: give a column ({', '.join(BY_COLUMNS)}) or a context key "
            "made of letters, digits, '_' and '-'"
        )
    # JSON path extraction: json_extract on SQLite, #>> on PostgreSQL, JSON_EXTRACT on MariaDB.
    return typing.cast("ColumnElement[Any]", _H.metadata[("context_data", by)].as_string())


def _label(value: Any) -> str:
    return NO_VALUE if value is None or value == "" else str(value)


def _median_and_p95(durations: Counter[float]) -> tuple[float | None, float | None]:
    """:func:`percentile` 0.5 and 0.95 of the multiset *durations* (value -> how many times),
    from one sort of its values."""
    if not durations:
        return None, None
    values = sorted(durations)
    ends = list(itertools.accumulate(durations[v] for v in values))  # ranks below each end

    def at(rank: int) -> float:
        return values[bisect.bisect_right(ends, rank)]

    found = []
    for fraction in (0.5, 0.95):
        position = (ends[-1] - 1) * fraction
        low, high = math.floor(position), math.ceil(position)
        found.append(at(low) + (at(high) - at(low)) * (position - low))
    return found[0], found[1]


def _totals(
    group: str | None, statuses: Counter[str], durations: Counter[float], longest: float | None
) -> GroupStats:
    finished = sum(statuses[s] for s in _FINISHED)
    p50, p95 = _median_and_p95(durations)
    return GroupStats(
        group=group,
        runs=sum(statuses.values()),
        completed=statuses[RunStatus.COMPLETED],
        failed=statuses[RunStatus.FAILED],
        cancelled=statuses[RunStatus.CANCELLED],
        abandoned=statuses[RunStatus.ABANDONED],
        running=sum(statuses[s] for s in ACTIVE_RUN_STATUSES),
        success_rate=statuses[RunStatus.COMPLETED] / finished if finished else None,
        p50_ms=p50,
        p95_ms=p95,
        max_ms=longest,
    )


class _Outcomes:
    """Status counts, completed durations (value -> count) and the longest, per key."""

    def __init__(self) -> None:
        self.statuses: defaultdict[Any, Counter[str]] = defaultdict(Counter)
        self.durations: defaultdict[Any, Counter[float]] = defaultdict(Counter)
        self.longest: dict[Any, float] = {}

    def add(
        self, key: Any, status: str, value: float | None, n: int = 1, longest: float | None = None
    ) -> None:
        """Count *n* runs of *status* lasting *value* ms (the longest of them: *longest*)."""
        status = _LEGACY_STATUSES.get(status, status)
        self.statuses[key][status] += n
        if status == RunStatus.COMPLETED and value is not None:
            self.durations[key][value] += n
            longest = value if longest is None else longest
            self.longest[key] = max(longest, self.longest.get(key, longest))

    def totals(self, key: Any, group: str | None) -> GroupStats:
        return _totals(group, self.statuses[key], self.durations[key], self.longest.get(key))


class _Runs(_Outcomes):
    """Outcomes per workflow and per (workflow, group), and how many runs were counted."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def add(
        self, key: Any, status: str, value: float | None, n: int = 1, longest: float | None = None
    ) -> None:
        self.count += n if isinstance(key, str) else 0  # runs, not (workflow, group) pairs
        super().add(key, status, value, n, longest)


class _Trend(_Outcomes):
    """Per workflow and interval: status counts and completed durations."""

    def __init__(self, every: dt.timedelta) -> None:
        super().__init__()
        self.every = every

    def start_of(self, when: dt.datetime) -> dt.datetime:
        """The start of the interval holding *when* (aligned to the epoch)."""
        when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return _EPOCH + self.every * ((when - _EPOCH) // self.every)

    def points(self, name: str, since: dt.datetime, until: dt.datetime) -> list[TrendPoint]:
        """Every interval of the window for *name*, empty ones included, oldest first."""
        points = []
        start = self.start_of(since)
        while start < until:
            t = self.totals((name, start), None)
            counts = (t.runs, t.completed, t.failed, t.cancelled, t.abandoned, t.running)
            points.append(TrendPoint(start, *counts, t.p50_ms, t.p95_ms))
            start += self.every
        return points


class _Steps:
    """The step attempts of one workflow: counts by outcome and error, durations."""

    def __init__(self) -> None:
        self.statuses: defaultdict[tuple[int, str], Counter[str]] = defaultdict(Counter)
        self.durations: defaultdict[tuple[int, str], Counter[float]] = defaultdict(Counter)
        self.errors: defaultdict[tuple[int, str], Counter[str | None]] = defaultdict(Counter)
        self.longest: dict[tuple[int, str], float] = {}

    def failed(self, key: tuple[int, str], error: str | None, n: int) -> None:
        """Count *n* failed attempts of the step *key* with the error type *error* (an empty
        type counts as none, as the rollups store it)."""
        self.errors[key][error or None] += n

    def counted(self, key: tuple[int, str], status: str, n: int, longest: Any) -> None:
        self.statuses[key][status] += n
        if status == StepStatus.COMPLETED and longest is not None:
            self.longest[key] = max(float(longest), self.longest.get(key, 0.0))

    def steps(self) -> list[StepStats]:
        result = []
        for key, n in sorted(self.statuses.items()):
            durations = self.durations[key]
            counts = (
                sum(n.values()),
                n[StepStatus.COMPLETED],
                n[StepStatus.FAILED],
                n[StepStatus.RETRYING],
                n[StepStatus.SKIPPED],
            )
            median, p95 = _median_and_p95(durations)
            longest = self.longest.get(key)
            sample = sum(durations.values())
            result.append(StepStats(*key, *counts, median, sample, p95, longest))
        return result

    def failing(self, top: int) -> list[FailingStep]:
        """The *top* steps with the most failed attempts, each with its commonest error type
        (ties: the first in sort order, none first); no example message yet."""
        ranked = sorted(self.errors.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        result = []
        for key, errors in ranked[:top]:
            count = max(errors.values())
            error_type = min((e for e, n in errors.items() if n == count), key=lambda e: e or "")
            result.append(FailingStep(*key, sum(errors.values()), error_type, count, None))
        return result


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
        trend = _Trend(every)
    in_window = [_H.started_at >= since, _H.started_at < until]
    if workflow is not None:
        in_window.append(_H.workflow_name == workflow)
    counted = None
    if source != "base" and _rollups_serve(conn, by, every, source):
        counted = _from_rollups(conn, since, until, workflow, trend, source == "rollups")
    if counted is None:
        trend = None if every is None else _Trend(every)
        runs = _count_runs(conn, in_window, by, trend)
        steps = _count_steps(conn, in_window, since, until, runs.count)
    else:
        runs, steps = counted
    names = sorted(k for k in runs.statuses if isinstance(k, str))
    workflows = [_workflow(name, runs, steps[name], top) for name in names]
    workflows = _with_examples(conn, workflows, in_window, since, until)
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


def _hours(when: dt.datetime) -> tuple[int, bool]:
    """Whole hours from the epoch to *when*, and whether *when* is on the hour."""
    whole, rest = divmod(when - _EPOCH, _HOUR)
    return whole, not rest


def _periods(first: int, last: int, spans: Sequence[int]) -> list[tuple[int, int, int]]:
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
    completed = runs.status.in_(_COMPLETED_WORDS)
    return case((completed, runs.bucket), else_=rollups.NO_DURATION).label("bucket")


def _total(column: Any) -> Any:
    """``SUM(column)`` as a ``BIGINT`` (PostgreSQL's sum of bigints is a numeric, which the
    driver would turn into a slower ``Decimal`` per cell)."""
    return cast(func.sum(column), BigInteger)


def _cells(
    conn: Connection, table: Any, periods: list[tuple[int, int, int]], workflow: str | None
) -> list[Any]:
    """*table*'s cells in *periods* (of :func:`_periods`), of one *workflow* or all, as the
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


def _from_rollups(
    conn: Connection,
    since: dt.datetime,
    until: dt.datetime,
    workflow: str | None,
    trend: _Trend | None,
    insist: bool,
) -> tuple[_Runs, defaultdict[str, _Steps]] | None:
    """The window's outcomes from the rollups over its whole days and hours and the base
    tables over the partial hours at its edges; ``None`` (read the base tables) when the window
    holds no whole hour or, unless *insist*, fewer than :data:`EXACT_BELOW_RUNS` runs."""
    first, on_hour = _hours(since)
    first += not on_hour
    last, _ = _hours(until)
    if first >= last and not insist:
        return None
    if first < last:
        edges = [(since, _EPOCH + first * _HOUR), (_EPOCH + last * _HOUR, until)]
    else:
        edges = [(since, until)]
    runs, steps = _Runs(), defaultdict[str, _Steps](_Steps)
    if conn.dialect.name == "postgresql":  # sort a window's cells in memory, not on disk,
        conn.execute(text(f"SET LOCAL work_mem = '{_PG_WORK_MEM}'"))
        # and in this process: a few thousand cells a period range, which parallel workers
        # only slow down (their start and the merge of their sorted halves: +15 % at 7 days)
        conn.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
    # The totals from the longest periods that fit; a trend's intervals, in a query of their
    # own, from the periods they hold whole (hours for an hourly trend).
    for source in _cells(conn, workflow_rollup, _periods(first, last, SPANS), workflow):
        r = source.c
        keys: list[Any] = [r.workflow_name, r.status, _timed(r)]
        query: Any = select(*keys, _total(r.runs), func.max(r.max_ms)).group_by(*keys)
        for name, status, bucket, n, longest in conn.execute(query).all():
            value = None if bucket < 0 else _BUCKET_VALUES[bucket]
            top = None if longest is None or value is None else float(longest)
            runs.add(_label(name), status, value, n, top)
    if trend is not None:
        every_s = int(trend.every.total_seconds())
        periods = _periods(first, last, _spans_of(every_s))
        for source in _cells(conn, workflow_rollup, periods, workflow):
            r = source.c
            interval = ((r.period * r.span_s) // every_s).label("interval")
            keys = [r.workflow_name, r.status, _timed(r), interval]
            query = select(*keys, _total(r.runs), func.max(r.max_ms)).group_by(*keys)
            for name, status, bucket, start, n, longest in conn.execute(query).all():
                value = None if bucket < 0 else _BUCKET_VALUES[bucket]
                top = None if longest is None or value is None else float(longest)
                point = (_label(name), _EPOCH + int(start) * trend.every)
                trend.add(point, status, value, n, top)
    if first < last:  # runs still active are not in the rollups: few, through the index
        whole_from, whole_to = _EPOCH + first * _HOUR, _EPOCH + last * _HOUR
        whole = [_H.started_at >= whole_from, _H.started_at < whole_to]
        if workflow is not None:
            whole.append(_H.workflow_name == workflow)
        active = select(_H.workflow_name, _H.status, _H.started_at)
        for name, status, started in conn.execute(
            active.where(_H.status.in_(rollups.ACTIVE_RUN_STATUSES), *whole)
        ):
            runs.add(_label(name), status, None)
            if trend is not None:
                trend.add((_label(name), trend.start_of(started)), status, None)
    edge_windows = []
    for low_at, high_at in edges:
        if low_at >= high_at:
            continue
        window = [_H.started_at >= low_at, _H.started_at < high_at]
        if workflow is not None:
            window.append(_H.workflow_name == workflow)
        edge_windows.append((window, low_at, high_at))
        _count_runs(conn, window, None, trend, runs)
    if runs.count < EXACT_BELOW_RUNS and not insist:
        return None
    named: dict[tuple[str, int, str], list[Any]] = {}  # [max step name, count, longest]
    completed, failed = StepStatus.COMPLETED.value, StepStatus.FAILED.value
    for source in _cells(conn, workflow_step_rollup, _periods(first, last, SPANS), workflow):
        c = source.c
        timed = case((c.status == completed, c.bucket), else_=rollups.NO_DURATION)
        step_keys = (c.workflow_name, c.step_index, c.step_name, c.status, c.error_type,
                     timed.label("bucket"))  # fmt: skip
        cells: Any = select(*step_keys, _total(c.attempts), func.max(c.max_ms))
        for name, index, step, status, error, bucket, count, longest in conn.execute(
            cells.group_by(*step_keys)  # durations of completed attempts only: fewer groups
        ).all():  # fetched at once: one driver call, not one a row
            label = _label(name)
            if status == completed:
                if bucket >= 0:
                    steps[label].durations[index, step][_BUCKET_VALUES[bucket]] += count
            elif status == failed:
                steps[label].failed((index, step), error, count)
            key = (label, index, status)  # as the base tables count: the index's max name
            known = named.get(key)
            if known is None:
                named[key] = [step, count, longest]
                continue
            known[1] += count
            if step > known[0]:
                known[0] = step
            if longest is not None and (known[2] is None or longest > known[2]):
                known[2] = longest
    if first < last:  # nor are the attempts still running
        running = select(_H.workflow_name, _S.step_index, func.max(_S.step_name), func.count())
        running = running.select_from(_JOINED).where(
            _S.status == rollups.ACTIVE_STEP_STATUS, *whole
        )
        for name, index, step, count in conn.execute(
            running.group_by(_H.workflow_name, _S.step_index)
        ):
            key = (_label(name), index, rollups.ACTIVE_STEP_STATUS)
            known = named.setdefault(key, [step, 0, None])
            known[0], known[1] = max(step, known[0]), known[1] + count
    for (label, index, status), (step, count, longest) in named.items():
        steps[label].counted((index, step), status, count, longest)
    for window, low_at, high_at in edge_windows:
        _count_steps(conn, window, low_at, high_at, 0, steps, edge=True)
    return runs, steps


def _count_runs(
    conn: Connection,
    in_window: list[ColumnElement[bool]],
    by: str | None,
    trend: _Trend | None,
    runs: _Runs | None = None,
) -> _Runs:
    """Outcomes and durations of the window's runs, per workflow, ``by`` group and interval."""
    columns: list[ColumnElement[Any]] = [
        _H.workflow_name, _H.status, _H.duration_ms, _H.started_at,
    ]  # fmt: skip
    if by is not None:
        columns.append(_by_expression(by).label("by_value"))
    runs = _Runs() if runs is None else runs
    for workflow_name, status, duration_ms, started_at, *by_value in conn.execute(
        select(*columns).where(*in_window)
    ):
        name = _label(workflow_name)
        value = None if duration_ms is None else float(duration_ms)
        runs.add(name, status, value)
        if by_value:
            runs.add((name, _label(by_value[0])), status, value)
        if trend is not None and started_at is not None:
            trend.add((name, trend.start_of(started_at)), status, value)
    return runs


def _step_window(
    conn: Connection, in_window: list[ColumnElement[bool]], since: dt.datetime, until: dt.datetime
) -> list[ColumnElement[bool]]:
    """The conditions that select the step attempts of the window's runs."""
    where = list(in_window)
    if conn.dialect.name == "postgresql":
        # PostgreSQL underestimates how many distinct run ids a large step table holds, so it
        # would rather hash-join a full scan of it. A step starts after its run and before the
        # run's last write: bounding the steps' own start lets it use their started_at index.
        where += _steps_started_within(conn, in_window, since, until)
    return where


def _steps_started_within(
    conn: Connection, in_window: list[ColumnElement[bool]], since: dt.datetime, until: dt.datetime
) -> list[ColumnElement[bool]]:
    """Bounds on the start of the window's step attempts: not before *since*, not after its
    runs' last write (plus the clock slack). One pass over the window's runs."""
    writes = select(func.max(_H.updated_at), func.max(_H.completed_at)).where(*in_window)
    last = max([until, *(w for w in conn.execute(writes).one() if w is not None)])
    return [_S.started_at >= since, _S.started_at <= last + _SLACK]


def _read_failures(
    conn: Connection,
    where: list[ColumnElement[bool]],
    since: dt.datetime,
    steps: defaultdict[str, _Steps],
) -> None:
    """The failed attempts per step and error type: read through the status index."""
    failed = [*where, _IS_FAILED, _S.started_at >= since]
    for name, index, step, error, n in conn.execute(_FAILED.where(*failed)):
        steps[_label(name)].failed((index, step), error, n)


def _with_examples(
    conn: Connection,
    workflows: list[WorkflowStats],
    in_window: list[ColumnElement[bool]],
    since: dt.datetime,
    until: dt.datetime,
) -> list[WorkflowStats]:
    """*workflows* with each failing step's example: the message of the latest failure of
    that step and error type among the window's runs (a message-less failure is passed over).

    One query per failing step, walking the status index down from the window's end (plus
    the clock slack) and stopping at its first match; only when that finds none (a failure
    that started over a day after the window) does it walk on unbounded. (One ``UNION ALL``
    of them all would save round trips, but PostgreSQL's generic plan for it, once the driver
    prepares it, reads every failure of the window: seconds over 90 days.)"""
    messages: list[str | None] = []
    for name, step in ((w.workflow_name, s) for w in workflows for s in w.top_failing_steps):
        latest = _latest_failure(name, step, in_window, since)
        message = conn.execute(latest.where(_S.started_at <= until + _SLACK)).scalar()
        messages.append(message if message is not None else conn.execute(latest).scalar())
    found = iter(messages)
    return [
        dataclasses.replace(
            w,
            top_failing_steps=[
                dataclasses.replace(step, example_message=next(found))
                for step in w.top_failing_steps
            ],
        )
        for w in workflows
    ]


def _latest_failure(
    name: str, step: FailingStep, in_window: list[ColumnElement[bool]], since: dt.datetime
) -> Any:
    """The message of *step*'s latest failure of its error type among the window's runs of
    the workflow *name*, through the status index (newest first, the first match)."""
    named = (
        (_H.workflow_name.is_(None) | _H.workflow_name.in_(("", NO_VALUE)))
        if name == NO_VALUE
        else _H.workflow_name == name
    )
    error = (
        (_S.error_type.is_(None) | (_S.error_type == ""))
        if step.error_type is None
        else _S.error_type == step.error_type
    )
    return (
        select(_S.error_message)
        .select_from(_JOINED)
        .where(
            *in_window,
            named,
            error,
            _IS_FAILED,
            _S.started_at >= since,
            _S.step_index == step.step_index,
            _S.step_name == step.step_name,
            func.coalesce(_S.error_message, "") != "",
        )
        .order_by(_S.started_at.desc())  # the status index's order: stops at the first
        .limit(1)
    )


def _count_steps(
    conn: Connection,
    in_window: list[ColumnElement[bool]],
    since: dt.datetime,
    until: dt.datetime,
    run_count: int,
    steps: defaultdict[str, _Steps] | None = None,
    *,
    edge: bool = False,
) -> defaultdict[str, _Steps]:
    """The step attempts of the window's runs, per workflow: counts, errors, durations (of a
    sample of about :data:`MEDIAN_SAMPLE_RUNS` runs when *run_count* is above it). *edge*: the
    window is a partial hour at the edge of a rollup read (few runs): its steps are found
    through their runs' ids (PostgreSQL too: bounding their start by the runs' last write plus
    a day's slack would have it scan a day of steps, 24 ms against 1 ms at 1,000,000 runs),
    its failed attempts through the status index bounded by that last write (unbounded above,
    the walk would pass every later failure: 80 ms an edge at 90 days on SQLite)."""
    where = in_window if edge else _step_window(conn, in_window, since, until)
    steps = defaultdict(_Steps) if steps is None else steps
    for name, index, status, step, n, longest in conn.execute(_COUNTED.where(*where)):
        steps[_label(name)].counted((index, step), status, n, longest)
    failed = where
    if edge:
        failed = where + _steps_started_within(conn, in_window, since, until)
    _read_failures(conn, failed, since, steps)
    timed = _TIMED.where(*where)
    if run_count > MEDIAN_SAMPLE_RUNS:  # about MEDIAN_SAMPLE_RUNS runs, scattered by id
        scrambled = cast(_H.id, BigInteger) * _SCRAMBLE % _SAMPLE_SPACE
        timed = timed.where(scrambled < _SAMPLE_SPACE * MEDIAN_SAMPLE_RUNS // run_count)
    for name, index, step, status, ms in conn.execute(timed):
        if status == StepStatus.COMPLETED and ms is not None:
            steps[_label(name)].durations[index, step][float(ms)] += 1
    return steps


def _workflow(name: str, runs: _Runs, steps: _Steps, top: int) -> WorkflowStats:
    groups = [runs.totals(k, k[1]) for k in runs.statuses if isinstance(k, tuple) and k[0] == name]
    return WorkflowStats(
        workflow_name=name,
        totals=runs.totals(name, None),
        steps=steps.steps(),
        top_failing_steps=steps.failing(top),
        groups=sorted(groups, key=lambda g: (-g.runs, g.group or "")),
    )
