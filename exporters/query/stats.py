"""Statistics over a time window: per workflow, per step, per device type or context key.

:func:`compute_stats` reads the runs started in ``[since, until)`` through the ``started_at``
index (run percentiles are exact, interpolated like PostgreSQL's ``percentile_cont``), then has
the database count their step attempts by step, outcome and error through the ``run_id`` index
(on PostgreSQL through the steps' own ``started_at`` index); step medians come from the
durations of every run's attempts, or of a fixed sample of about :data:`MEDIAN_SAMPLE_RUNS`
runs in a busier window, so the work stays bounded. ``by`` splits the runs by a column or a key
of the run's context, read with each dialect's JSON extraction.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import typing
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, cast, func, select
from sqlalchemy.engine import Connection

from exporters.db.schema import workflow_history, workflow_step_history
from exporters.query.records import FailingStep, GroupStats, StatsReport, StepStats, WorkflowStats
from instrumentation.attributes import (
    ACTIVE_RUN_STATUSES,
    FINAL_RUN_STATUSES,
    RunStatus,
    StepStatus,
)

__all__ = [
    "BY_COLUMNS",
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

_LEGACY_STATUSES = {"success": RunStatus.COMPLETED.value}  # the old system's word for completed
_CONTEXT_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")
_FINISHED = (*sorted(FINAL_RUN_STATUSES), RunStatus.ABANDONED)
_H, _S = workflow_history.c, workflow_step_history.c
_SCRAMBLE, _SAMPLE_SPACE = 7919, 10007  # id * prime % prime: a sample without a period
_SLACK = dt.timedelta(days=1)  # clocks of the hosts that wrote the rows may disagree
_JOINED = workflow_history.join(workflow_step_history, _S.run_id == _H.run_id)
_COUNT_KEYS = (_H.workflow_name, _S.step_index, _S.status)  # few and narrow: a cheap sort
_COUNTED = select(*_COUNT_KEYS, func.max(_S.step_name), func.count())
_COUNTED = _COUNTED.select_from(_JOINED).group_by(*_COUNT_KEYS)
_STEP = (_H.workflow_name, _S.step_index, _S.step_name)
_TIMED = select(*_STEP, _S.status, _S.duration_ms).select_from(_JOINED)
_FAILED = select(*_STEP, _S.error_type, _S.error_message).select_from(_JOINED)


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


def _totals(group: str | None, statuses: Counter[str], durations: list[float]) -> GroupStats:
    finished = sum(statuses[s] for s in _FINISHED)
    durations.sort()
    return GroupStats(
        group=group,
        runs=sum(statuses.values()),
        completed=statuses[RunStatus.COMPLETED],
        failed=statuses[RunStatus.FAILED],
        cancelled=statuses[RunStatus.CANCELLED],
        abandoned=statuses[RunStatus.ABANDONED],
        running=sum(statuses[s] for s in ACTIVE_RUN_STATUSES),
        success_rate=statuses[RunStatus.COMPLETED] / finished if finished else None,
        p50_ms=percentile(durations, 0.5),
        p95_ms=percentile(durations, 0.95),
        max_ms=durations[-1] if durations else None,
    )


class _Runs:
    """Status counts and completed durations, per workflow and per (workflow, group)."""

    def __init__(self) -> None:
        self.statuses: defaultdict[Any, Counter[str]] = defaultdict(Counter)
        self.durations: defaultdict[Any, list[float]] = defaultdict(list)
        self.count = 0

    def add(self, key: Any, status: str, duration_ms: int | None) -> None:
        self.count += isinstance(key, str)  # runs, not (workflow, group) pairs
        status = _LEGACY_STATUSES.get(status, status)
        self.statuses[key][status] += 1
        if status == RunStatus.COMPLETED and duration_ms is not None:
            self.durations[key].append(float(duration_ms))

    def totals(self, key: Any, group: str | None) -> GroupStats:
        return _totals(group, self.statuses[key], self.durations[key])


class _Steps:
    """The step attempts of one workflow: counts by outcome and error, sampled durations."""

    def __init__(self) -> None:
        self.statuses: defaultdict[tuple[int, str], Counter[str]] = defaultdict(Counter)
        self.durations: defaultdict[tuple[int, str], list[float]] = defaultdict(list)
        self.errors: defaultdict[tuple[int, str], Counter[str | None]] = defaultdict(Counter)
        self.examples: dict[tuple[int, str, str | None], str] = {}

    def failed(self, key: tuple[int, str], error: str | None, message: str | None) -> None:
        self.errors[key][error] += 1
        if message:
            self.examples.setdefault((*key, error), message)

    def steps(self) -> list[StepStats]:
        result = []
        for key, n in sorted(self.statuses.items()):
            durations = sorted(self.durations[key])
            counts = (
                sum(n.values()),
                n[StepStatus.COMPLETED],
                n[StepStatus.FAILED],
                n[StepStatus.RETRYING],
                n[StepStatus.SKIPPED],
            )
            median = percentile(durations, 0.5)
            result.append(StepStats(*key, *counts, median, len(durations)))
        return result

    def failing(self, top: int) -> list[FailingStep]:
        ranked = sorted(self.errors.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        result = []
        for key, errors in ranked[:top]:
            error_type, count = errors.most_common(1)[0]
            example = self.examples.get((*key, error_type))
            result.append(FailingStep(*key, sum(errors.values()), error_type, count, example))
        return result


def compute_stats(
    conn: Connection,
    *,
    since: dt.datetime,
    until: dt.datetime | None = None,
    workflow: str | None = None,
    by: str | None = None,
    top: int = 5,
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

    Raises:
        ValueError: *by* is neither a column nor a plain context key, or *top* is negative.
    """
    if top < 0:
        raise ValueError(f"top must be zero or more, not {top}")
    since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    until = until or dt.datetime.now(dt.UTC)
    until = until if until.tzinfo else until.replace(tzinfo=dt.UTC)
    in_window = [_H.started_at >= since, _H.started_at < until]
    if workflow is not None:
        in_window.append(_H.workflow_name == workflow)
    runs = _count_runs(conn, in_window, by)
    steps = _count_steps(conn, in_window, since, until, runs.count)
    names = sorted(k for k in runs.statuses if isinstance(k, str))
    return StatsReport(
        since=since,
        until=until,
        by=by,
        workflows=[_workflow(name, runs, steps[name], top) for name in names],
    )


def _count_runs(conn: Connection, in_window: list[ColumnElement[bool]], by: str | None) -> _Runs:
    """Outcomes and durations of the window's runs, per workflow and per ``by`` group."""
    columns: list[ColumnElement[Any]] = [_H.workflow_name, _H.status, _H.duration_ms]
    if by is not None:
        columns.append(_by_expression(by).label("by_value"))
    runs = _Runs()
    for workflow_name, status, duration_ms, *by_value in conn.execute(
        select(*columns).where(*in_window)
    ):
        name = _label(workflow_name)
        runs.add(name, status, duration_ms)
        if by_value:
            runs.add((name, _label(by_value[0])), status, duration_ms)
    return runs


def _count_steps(
    conn: Connection,
    in_window: list[ColumnElement[bool]],
    since: dt.datetime,
    until: dt.datetime,
    run_count: int,
) -> defaultdict[str, _Steps]:
    """The step attempts of the window's runs, per workflow: counts, errors, durations."""
    where = list(in_window)
    if conn.dialect.name == "postgresql":
        # PostgreSQL underestimates how many distinct run ids a large step table holds, so it
        # would rather hash-join a full scan of it. A step starts after its run and before the
        # run's last write: bounding the steps' own start lets it use their started_at index.
        writes = select(func.max(_H.updated_at), func.max(_H.completed_at)).where(*in_window)
        last = max([until, *(w for w in conn.execute(writes).one() if w is not None)])
        where += [_S.started_at >= since, _S.started_at <= last + _SLACK]
    steps: defaultdict[str, _Steps] = defaultdict(_Steps)
    for name, index, status, step, n in conn.execute(_COUNTED.where(*where)):
        steps[_label(name)].statuses[index, step][status] += n
    # The failed attempts, for their errors: few, read through the status index.
    failed = [*where, _S.status == StepStatus.FAILED.value, _S.started_at >= since]
    for name, index, step, error, message in conn.execute(_FAILED.where(*failed)):
        steps[_label(name)].failed((index, step), error, message)
    timed = _TIMED.where(*where)
    if run_count > MEDIAN_SAMPLE_RUNS:  # about MEDIAN_SAMPLE_RUNS runs, scattered by id
        scrambled = cast(_H.id, BigInteger) * _SCRAMBLE % _SAMPLE_SPACE
        timed = timed.where(scrambled < _SAMPLE_SPACE * MEDIAN_SAMPLE_RUNS // run_count)
    for name, index, step, status, ms in conn.execute(timed):
        if status == StepStatus.COMPLETED and ms is not None:
            steps[_label(name)].durations[index, step].append(float(ms))
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
