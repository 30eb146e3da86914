"""Counting a window's runs and step attempts: the tallies both readers of stats fill.

:class:`Runs`, :class:`Trend` and :class:`Steps` hold status counts, durations (value -> how
many) and failures per error type per workflow, interval and step, and turn them into the
records of :mod:`exporters.query.records` (percentiles interpolated like PostgreSQL's
``percentile_cont``). :func:`count_runs` and :func:`count_steps` fill them from the base tables:
the runs started in a window through the ``started_at`` index, their step attempts counted by
the database through the ``run_id`` index (on PostgreSQL through the steps' own ``started_at``
index), step durations from every run or a fixed sample of about :data:`MEDIAN_SAMPLE_RUNS`
runs; :func:`with_examples` finds each failing step's latest message. ``by`` splits runs by a
column or a key of the run's context, read with each dialect's JSON extraction.
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
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    bindparam,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.engine import Connection

from exporters.db.rollups import BUCKET_LOWER_MS, bucket_value
from exporters.db.schema import (
    workflow_history,
    workflow_step_history,
)
from exporters.query.records import (
    FailingStep,
    GroupStats,
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
    "BUCKET_VALUES",
    "BY_COLUMNS",
    "COMPLETED_WORDS",
    "EPOCH",
    "MEDIAN_SAMPLE_RUNS",
    "NO_VALUE",
    "Outcomes",
    "Runs",
    "StepCounts",
    "Steps",
    "Trend",
    "count_attempts",
    "count_runs",
    "count_steps",
    "label_of",
    "median_and_p95",
    "percentile",
    "with_examples",
]

BY_COLUMNS = ("device_type", "host", "server_id", "service_name", "workflow_id")
"""``by`` values read from a column; any other plain key is read from the run's context."""

NO_VALUE = "(none)"
"""The group of runs whose ``by`` value is missing, and the name of unnamed workflows."""

MEDIAN_SAMPLE_RUNS = 2000
"""Above this many runs in the window, step medians come from a sample of about as many."""

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""Where trend intervals and rollup periods are counted from."""

BUCKET_VALUES = tuple(bucket_value(b) for b in range(len(BUCKET_LOWER_MS)))
"""The duration a rollup bucket stands for (its geometric middle), by bucket."""

_LEGACY_STATUSES = {"success": RunStatus.COMPLETED.value}  # the old system's word for completed
COMPLETED_WORDS = (RunStatus.COMPLETED.value, *_LEGACY_STATUSES)
"""The stored statuses of a completed run (the old system wrote ``success``)."""

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
_ATTEMPTS = select(*_STEP, _S.status, _S.duration_ms, _S.error_type).select_from(_JOINED)
_FAILED_KEYS = (*_STEP, _S.error_type)
_FAILED = select(*_FAILED_KEYS, func.count()).select_from(_JOINED).group_by(*_FAILED_KEYS)
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


def label_of(value: Any) -> str:
    return NO_VALUE if value is None or value == "" else str(value)


def median_and_p95(durations: Counter[float]) -> tuple[float | None, float | None]:
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


def _counts(statuses: Counter[str]) -> tuple[int, int, int, int, int, int]:
    """Runs, completed, failed, cancelled, abandoned and running, from status counts."""
    return (
        sum(statuses.values()),
        statuses[RunStatus.COMPLETED],
        statuses[RunStatus.FAILED],
        statuses[RunStatus.CANCELLED],
        statuses[RunStatus.ABANDONED],
        sum(statuses[s] for s in ACTIVE_RUN_STATUSES),
    )


def _totals(
    group: str | None, statuses: Counter[str], durations: Counter[float], longest: float | None
) -> GroupStats:
    finished = sum(statuses[s] for s in _FINISHED)
    p50, p95 = median_and_p95(durations)
    runs, completed, failed, cancelled, abandoned, running = _counts(statuses)
    return GroupStats(
        group=group,
        runs=runs,
        completed=completed,
        failed=failed,
        cancelled=cancelled,
        abandoned=abandoned,
        running=running,
        success_rate=completed / finished if finished else None,
        p50_ms=p50,
        p95_ms=p95,
        max_ms=longest,
    )


class Outcomes:
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


class Runs(Outcomes):
    """Outcomes per workflow and per (workflow, group), and how many runs were counted."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def add(
        self, key: Any, status: str, value: float | None, n: int = 1, longest: float | None = None
    ) -> None:
        self.count += n if isinstance(key, str) else 0  # runs, not (workflow, group) pairs
        super().add(key, status, value, n, longest)


class Trend(Outcomes):
    """Per workflow and interval: status counts and completed durations."""

    def __init__(self, every: dt.timedelta) -> None:
        super().__init__()
        self.every = every

    def start_of(self, when: dt.datetime) -> dt.datetime:
        """The start of the interval holding *when* (aligned to the epoch)."""
        when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return EPOCH + self.every * ((when - EPOCH) // self.every)

    def add_cells(self, cells: Iterable[Sequence[Any]]) -> None:
        """Count rollup cells, each (workflow name, status, duration bucket, interval number
        since the epoch, runs, longest ms): :meth:`add`'s work in one loop, for the thousands
        of cells of an hourly trend (a call and a ``Counter`` miss a cell cost 2 µs)."""
        labels: dict[Any, str] = {}
        starts: dict[int, dt.datetime] = {}
        completed = RunStatus.COMPLETED.value
        for name, status, bucket, number, n, longest in cells:
            label = labels.get(name)
            if label is None:
                label = labels[name] = label_of(name)
            at = starts.get(number)
            if at is None:
                at = starts[number] = EPOCH + int(number) * self.every
            key = (label, at)
            status = _LEGACY_STATUSES.get(status, status)
            counts = self.statuses[key]
            counts[status] = counts.get(status, 0) + n
            if status == completed and bucket >= 0:
                value = BUCKET_VALUES[bucket]
                durations = self.durations[key]
                durations[value] = durations.get(value, 0) + n
                top = value if longest is None else float(longest)
                if top > self.longest.get(key, top - 1):
                    self.longest[key] = top

    def points(self, name: str, since: dt.datetime, until: dt.datetime) -> list[TrendPoint]:
        """Every interval of the window for *name*, empty ones included, oldest first."""
        points = []
        start = self.start_of(since)
        none: Counter[Any] = Counter()
        while start < until:
            statuses = self.statuses.get((name, start), none)
            p50, p95 = median_and_p95(self.durations.get((name, start), none))
            points.append(TrendPoint(start, *_counts(statuses), p50, p95))
            start += self.every
        return points


class Steps:
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
            median, p95 = median_and_p95(durations)
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


class StepCounts:
    """Attempt counts per workflow, step index and status gathered from several sources (rollup
    cells, edge rows), each index under the greatest name seen for it, as the database's
    ``GROUP BY step_index`` with ``max(step_name)`` counts them on the base tables."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, int, str], list[Any]] = {}  # [name, count, longest]

    def add(self, label: str, index: int, status: str, step: str, n: int, longest: Any) -> None:
        """Count *n* attempts of *status* of step *index* (named *step*), the longest *longest*."""
        known = self._counts.get((label, index, status))
        if known is None:
            self._counts[label, index, status] = [step, n, longest]
            return
        known[1] += n
        if step > known[0]:
            known[0] = step
        if longest is not None and (known[2] is None or longest > known[2]):
            known[2] = longest

    def into(self, steps: defaultdict[str, Steps]) -> None:
        """Add the counts to *steps*."""
        for (label, index, status), (step, n, longest) in self._counts.items():
            steps[label].counted((index, step), status, n, longest)


def count_attempts(
    conn: Connection,
    in_window: list[ColumnElement[bool]],
    steps: defaultdict[str, Steps],
    counts: StepCounts,
) -> None:
    """Every step attempt of the window's runs, found through their runs' ids and counted here
    from one read: durations and failures per error type into *steps*, counts into *counts*.
    For the partial hours at the edges of a rollup read (about a hundred runs at a million a
    year), where three grouped reads cost twice as much."""
    completed, failed = StepStatus.COMPLETED.value, StepStatus.FAILED.value
    for name, index, step, status, ms, error in conn.execute(_ATTEMPTS.where(*in_window)):
        label = label_of(name)
        if status == completed and ms is not None:
            steps[label].durations[index, step][float(ms)] += 1
        elif status == failed:
            steps[label].failed((index, step), error, 1)
        counts.add(label, index, status, step, 1, ms)


def count_runs(
    conn: Connection,
    in_window: list[ColumnElement[bool]],
    by: str | None,
    trend: Trend | None,
    runs: Runs | None = None,
) -> Runs:
    """Outcomes and durations of the window's runs, per workflow, ``by`` group and interval."""
    columns: list[ColumnElement[Any]] = [
        _H.workflow_name, _H.status, _H.duration_ms, _H.started_at,
    ]  # fmt: skip
    if by is not None:
        columns.append(_by_expression(by).label("by_value"))
    runs = Runs() if runs is None else runs
    for workflow_name, status, duration_ms, started_at, *by_value in conn.execute(
        select(*columns).where(*in_window)
    ):
        name = label_of(workflow_name)
        value = None if duration_ms is None else float(duration_ms)
        runs.add(name, status, value)
        if by_value:
            runs.add((name, label_of(by_value[0])), status, value)
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
    steps: defaultdict[str, Steps],
) -> None:
    """The failed attempts per step and error type: read through the status index."""
    failed = [*where, _IS_FAILED, _S.started_at >= since]
    for name, index, step, error, n in conn.execute(_FAILED.where(*failed)):
        steps[label_of(name)].failed((index, step), error, n)


def with_examples(
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
    statements: dict[tuple[bool, bool, bool], Any] = {}
    messages: list[str | None] = []
    for name, step in ((w.workflow_name, s) for w in workflows for s in w.top_failing_steps):
        unnamed, untyped = name == NO_VALUE, step.error_type is None
        params = {"name": name, "index": step.step_index, "step": step.step_name,
                  "error": step.error_type}  # fmt: skip
        message = None
        for bounded in (True, False):  # the unbounded walk only where the bounded finds none
            statement = statements.get((unnamed, untyped, bounded))
            if statement is None:
                statement = _latest_failure(unnamed, untyped, in_window, since)
                if bounded:
                    statement = statement.where(_S.started_at <= until + _SLACK)
                statements[unnamed, untyped, bounded] = statement
            message = conn.execute(statement, params).scalar()
            if message is not None:
                break
        messages.append(message)
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
    unnamed: bool, untyped: bool, in_window: list[ColumnElement[bool]], since: dt.datetime
) -> Any:
    """The message of a step's latest failure of one error type among the window's runs of
    one workflow, through the status index (newest first, the first match). The workflow,
    step index and name and error type are the parameters ``name``, ``index``, ``step`` and
    ``error`` (one statement for every failing step: built and compiled once); *unnamed*: the
    workflow is :data:`NO_VALUE` (no name), *untyped*: the error type is none."""
    named = (
        (_H.workflow_name.is_(None) | _H.workflow_name.in_(("", NO_VALUE)))
        if unnamed
        else _H.workflow_name == bindparam("name")
    )
    error = (
        (_S.error_type.is_(None) | (_S.error_type == ""))
        if untyped
        else _S.error_type == bindparam("error")
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
            _S.step_index == bindparam("index"),
            _S.step_name == bindparam("step"),
            func.coalesce(_S.error_message, "") != "",
        )
        .order_by(_S.started_at.desc())  # the status index's order: stops at the first
        .limit(1)
    )


def count_steps(
    conn: Connection,
    in_window: list[ColumnElement[bool]],
    since: dt.datetime,
    until: dt.datetime,
    run_count: int,
) -> defaultdict[str, Steps]:
    """The step attempts of the window's runs, per workflow: counts, errors, durations (of a
    sample of about :data:`MEDIAN_SAMPLE_RUNS` runs when *run_count* is above it)."""
    where = _step_window(conn, in_window, since, until)
    steps: defaultdict[str, Steps] = defaultdict(Steps)
    for name, index, status, step, n, longest in conn.execute(_COUNTED.where(*where)):
        steps[label_of(name)].counted((index, step), status, n, longest)
    _read_failures(conn, where, since, steps)
    timed = _TIMED.where(*where)
    if run_count > MEDIAN_SAMPLE_RUNS:  # about MEDIAN_SAMPLE_RUNS runs, scattered by id
        scrambled = cast(_H.id, BigInteger) * _SCRAMBLE % _SAMPLE_SPACE
        timed = timed.where(scrambled < _SAMPLE_SPACE * MEDIAN_SAMPLE_RUNS // run_count)
    for name, index, step, status, ms in conn.execute(timed):
        if status == StepStatus.COMPLETED and ms is not None:
            steps[label_of(name)].durations[index, step][float(ms)] += 1
    return steps
