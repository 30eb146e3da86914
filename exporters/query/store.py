"""Read the history back: the typed query API the command line and web views are built on.

:class:`HistoryStore` wraps an engine and answers four questions: which runs match some filters
(:meth:`~HistoryStore.list_runs`, newest first), what happened in one run
(:meth:`~HistoryStore.get_run`: a run id, unique prefix or workflow id, resolved by
:mod:`exporters.query.lookup`), which runs are in progress (:meth:`~HistoryStore.active_runs`) and
how workflows did over a window (:meth:`~HistoryStore.stats`, from :mod:`exporters.query.stats`). It
never prints; results are the frozen records of :mod:`exporters.query.records`, secrets redacted.
Every query is time-bounded or served by an index, with SQLAlchemy Core constructs that
SQLite, PostgreSQL and MariaDB share.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Self

from sqlalchemy import Row, Select, func, select
from sqlalchemy.engine import URL, Connection, Engine

from exporters.db.engine import make_read_engine
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.query.diff import BASELINE_RUNS, RunDiff, diff_runs, step_baselines
from exporters.query.lookup import MIN_PREFIX_LENGTH, AmbiguousRunError, RunNotFoundError, find_run
from exporters.query.records import (
    ActiveRun,
    FailingStep,
    GroupStats,
    MatchedBy,
    RunDetail,
    RunSummary,
    StatsReport,
    StepRecord,
    StepStats,
    WorkflowStats,
)
from exporters.query.stats import compute_stats
from exporters.query.where import where_conditions
from instrumentation import redact
from instrumentation.attributes import ACTIVE_RUN_STATUSES, FINAL_RUN_STATUSES, RunStatus

__all__ = [
    "MIN_PREFIX_LENGTH",
    "ActiveRun",
    "AmbiguousRunError",
    "FailingStep",
    "GroupStats",
    "HistoryStore",
    "RunDetail",
    "RunNotFoundError",
    "RunSummary",
    "StatsReport",
    "StepRecord",
    "StepStats",
    "WorkflowStats",
]

_ACTIVE = tuple(sorted(status.value for status in ACTIVE_RUN_STATUSES))
_REDACTED_FIELDS = frozenset(
    {"error_message", "error_stacktrace", "input", "logs", "message", "metadata", "output"}
)
_H = workflow_history.c
_S = workflow_step_history.c
_SUMMARY_FIELDS = [f.name for f in dataclasses.fields(RunSummary)]
_DETAIL_COLUMNS = [f.name for f in dataclasses.fields(RunDetail) if f.name in _H]
_STEP_FIELDS = [f.name for f in dataclasses.fields(StepRecord)]
_ACTIVE_FIELDS = [f.name for f in dataclasses.fields(ActiveRun)]


def _newest_rows(
    conn: Connection, query: Select[Any], limit: int, *, undated: bool = True
) -> list[Row[Any]]:
    """Rows of *query* newest first, in an order the ``started_at`` indexes can provide.

    With *undated*, runs without a start time follow the others, most recently inserted first.
    """
    dated = query.where(_H.started_at.is_not(None)).order_by(_H.started_at.desc(), _H.id.desc())
    rows = list(conn.execute(dated.limit(limit)))
    if undated and len(rows) < limit:
        rest = query.where(_H.started_at.is_(None)).order_by(_H.id.desc())
        rows.extend(conn.execute(rest.limit(limit - len(rows))))
    return rows


def _redacted(values: dict[str, Any]) -> dict[str, Any]:
    """*values* with free text and JSON redacted again (rows may come from other writers)."""
    for key in _REDACTED_FIELDS.intersection(values):
        if values[key] is not None:
            values[key] = redact(values[key])
    return values


class HistoryStore:
    """Queries over the history tables of one database; safe to share between threads.

    Each call opens a pooled connection, runs a few indexed queries and returns records; it
    never prints, so a web view can call it and serialise the result::

        store = HistoryStore.from_url("postgresql+psycopg://reader@db/flowtel")
        week = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
        failed = [run.to_json() for run in store.list_runs(status="failed", since=week)]
        detail = store.get_run(failed[0]["run_id"])  # .steps, .failed_step, .trace_url
        report = store.stats(since=week, by="device_type").to_json()

    Database errors propagate as :class:`sqlalchemy.exc.SQLAlchemyError`.

    Args:
        engine: the engine to query (see :func:`exporters.make_engine`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str | URL | None = None) -> Self:
        """Open the store read-only on *url* (default: ``FLOWTEL_DATABASE_URL`` or ``flowtel.db``).

        The engine comes from :func:`~exporters.db.engine.make_read_engine`: the database is
        never created or changed (a SQLite file keeps its journal mode).

        Raises:
            DatabaseURLError: the URL cannot be parsed or its driver is missing.
        """
        return cls(make_read_engine(url))

    def close(self) -> None:
        """Close the engine's pooled connections (the engine stays usable)."""
        self.engine.dispose()

    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        workflow_id: str | None = None,
        server_id: str | None = None,
        device_type: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        where: Mapping[str, str] | None = None,
        limit: int = 50,
    ) -> list[RunSummary]:
        """Return the runs matching every given filter, newest first.

        Args:
            status: a run status such as ``failed``.
            workflow: the workflow's name (``provision_server``).
            workflow_id: the logical id (``provision_srv-0042``).
            server_id: the server the run was about.
            device_type: the device type the run was about.
            since: only runs started at or after this time (naive means UTC).
            until: only runs started before this time (naive means UTC).
            where: context keys and the text their values must have, all of them
                (``{"rack": "7"}``; any key, indexed: see :mod:`exporters.query.where`).
            limit: the most runs to return.

        Raises:
            ValueError: *limit* is not positive, or a *where* key cannot be filtered on.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        query = select(*(_H[name] for name in _SUMMARY_FIELDS))
        for column, value in (
            (_H.status, status),
            (_H.workflow_name, workflow),
            (_H.workflow_id, workflow_id),
            (_H.server_id, server_id),
            (_H.device_type, device_type),
        ):
            if value is not None:
                query = query.where(column == str(value))
        if since is not None:
            query = query.where(_H.started_at >= since)
        if until is not None:
            query = query.where(_H.started_at < until)
        with self.engine.connect() as conn:
            if where:
                query = query.where(*where_conditions(conn, where))
            rows = _newest_rows(conn, query, limit, undated=since is None and until is None)
            return [RunSummary(**row._asdict()) for row in rows]

    def active_runs(self, *, workflow: str | None = None, limit: int = 100) -> list[ActiveRun]:
        """Return the runs still ``pending`` or ``running``, most recently started first.

        Args:
            workflow: only runs of this workflow name.
            limit: the most runs to return.

        Raises:
            ValueError: *limit* is not positive.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        query = select(*(_H[name] for name in _ACTIVE_FIELDS)).where(_H.status.in_(_ACTIVE))
        if workflow is not None:
            query = query.where(_H.workflow_name == workflow)
        with self.engine.connect() as conn:
            return [ActiveRun(**row._asdict()) for row in _newest_rows(conn, query, limit)]

    def stats(
        self,
        *,
        since: dt.datetime,
        until: dt.datetime | None = None,
        workflow: str | None = None,
        by: str | None = None,
        top: int = 5,
        every: dt.timedelta | None = None,
    ) -> StatsReport:
        """Return run and step statistics per workflow for runs started in a window.

        Args:
            since: the window's start (inclusive; naive means UTC).
            until: the window's end (exclusive; default: now).
            workflow: only this workflow name.
            by: also split each workflow's runs by this column (``device_type``,
                ``server_id``, ``workflow_id``, ``host``, ``service_name``) or context key.
            top: how many failing steps to list per workflow.
            every: also give each workflow's runs per interval this long (its ``trend``:
                runs by outcome, p50/p95 duration), e.g. ``timedelta(hours=1)``.

        Raises:
            ValueError: *by* is not a column or a plain context key, *top* is negative, or
                *every* is under a minute or makes more than 2,000 intervals.
        """
        with self.engine.connect() as conn:
            return compute_stats(
                conn, since=since, until=until, workflow=workflow, by=by, top=top, every=every
            )

    def get_run(self, ref: str) -> RunDetail:
        """Return one run with its steps.

        *ref* is tried, in order, as a full run id, as a workflow id (its latest run) and as
        a run-id prefix of at least :data:`MIN_PREFIX_LENGTH` characters.

        Raises:
            RunNotFoundError: nothing matches; the message suggests the closest id.
            AmbiguousRunError: *ref* is a prefix of several run ids.
        """
        columns = [_H[name] for name in _DETAIL_COLUMNS]
        with self.engine.connect() as conn:
            return self._detail(conn, *find_run(conn, ref.strip(), columns))

    def finished_runs(
        self,
        *,
        since: dt.datetime,
        statuses: Sequence[str] = tuple(FINAL_RUN_STATUSES | {RunStatus.ABANDONED}),
        workflow: str | None = None,
        limit: int = 1000,
    ) -> list[RunSummary]:
        """Return the runs that ended at or after *since*, oldest ``completed_at`` first.

        What ``flowtel notify`` follows: runs with one of *statuses* (by default every final
        status and ``abandoned``) whose ``completed_at`` is not before *since*, ordered by
        ``completed_at`` then ``run_id`` so that equal times keep one order.

        Args:
            since: the earliest end time (naive means UTC).
            statuses: the statuses to include.
            workflow: only runs of this workflow name.
            limit: the most runs to return.

        Raises:
            ValueError: *limit* is not positive or *statuses* is empty.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        if not statuses:
            raise ValueError("statuses must name at least one run status")
        query = (
            select(*(_H[name] for name in _SUMMARY_FIELDS))
            .where(_H.status.in_([str(s) for s in statuses]), _H.completed_at >= since)
            .order_by(_H.completed_at, _H.run_id)
            .limit(limit)
        )
        if workflow is not None:
            query = query.where(_H.workflow_name == workflow)
        with self.engine.connect() as conn:
            return [RunSummary(**row._asdict()) for row in conn.execute(query)]

    def diff_runs(
        self, ref_a: str | None, ref_b: str, *, baseline_runs: int = BASELINE_RUNS
    ) -> RunDiff:
        """Compare run *ref_b* with run *ref_a* (each resolved as :meth:`get_run` does).

        With *ref_a* ``None``, *ref_b* is compared with the latest completed run of its
        workflow started before it. Steps slower than their p95 over the workflow's last
        *baseline_runs* completed runs are flagged (``StepSide.slow``).

        Raises:
            RunNotFoundError: a reference matches nothing, or *ref_a* is ``None`` and the
                workflow has no earlier completed run.
            AmbiguousRunError: a reference is a prefix of several run ids.
        """
        b = self.get_run(ref_b)
        if ref_a is None:
            ref_a = self.previous_completed_run(b.run_id)
            if ref_a is None:
                raise RunNotFoundError(
                    f"no completed run of {b.workflow_name or b.workflow_id!r} started before "
                    f"{b.run_id} to compare with; name both runs"
                )
        a = self.get_run(ref_a)
        with self.engine.connect() as conn:
            baselines, counted = step_baselines(conn, a.workflow_name, runs=baseline_runs)
        return diff_runs(a, b, baselines, counted)

    def previous_completed_run(self, run_id: str) -> str | None:
        """The latest completed run of *run_id*'s workflow started before it, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_H.workflow_name, _H.started_at).where(_H.run_id == run_id)
            ).first()
            if row is None or row.started_at is None:
                return None
            query = (
                select(_H.run_id)
                .where(
                    _H.workflow_name == row.workflow_name,
                    _H.status == RunStatus.COMPLETED,
                    _H.started_at < row.started_at,
                )
                .order_by(_H.started_at.desc(), _H.id.desc())
                .limit(1)
            )
            found = conn.execute(query).scalar()
            return None if found is None else str(found)

    def step_baselines(
        self, workflow: str | None, *, runs: int = BASELINE_RUNS
    ) -> dict[str, float]:
        """Each step's p95 duration in ms over *workflow*'s last *runs* completed runs."""
        with self.engine.connect() as conn:
            return step_baselines(conn, workflow, runs=runs)[0]

    def _detail(self, conn: Connection, row: Row[Any], matched_by: MatchedBy) -> RunDetail:
        steps_query = (
            select(*(_S[name] for name in _STEP_FIELDS))
            .where(_S.run_id == row.run_id)
            .order_by(_S.step_index, _S.attempt, _S.started_at, _S.id)
        )
        steps = [StepRecord(**_redacted(r._asdict())) for r in conn.execute(steps_query)]
        others = conn.execute(
            select(func.count()).where(_H.workflow_id == row.workflow_id, _H.run_id != row.run_id)
        ).scalar_one()
        values = _redacted(row._asdict())
        values["metadata"] = values["metadata"] if isinstance(values["metadata"], dict) else {}
        return RunDetail(**values, steps=steps, matched_by=matched_by, other_runs=others)
