"""Read the history back: a small, typed query API over ``workflow_history`` and its steps.

:class:`HistoryStore` wraps an engine and answers the two questions the command line asks:
which runs match some filters (:meth:`HistoryStore.list_runs`, newest first) and what happened
in one run (:meth:`HistoryStore.get_run`, by full run id, unique run-id prefix or workflow id).
Results are frozen dataclasses whose ``to_json()`` gives JSON-ready dictionaries with stable keys
and ISO 8601 UTC timestamps. Only SQLAlchemy Core constructs every dialect shares are used, so
the same queries run on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
from collections.abc import Sequence
from typing import Any, Literal, Self

from sqlalchemy import ColumnElement, Row, case, func, select
from sqlalchemy.engine import URL, Connection, Engine

from .database import make_engine
from .schema import workflow_history, workflow_step_history

__all__ = [
    "MIN_PREFIX_LENGTH",
    "AmbiguousRunError",
    "HistoryStore",
    "RunDetail",
    "RunNotFoundError",
    "RunSummary",
    "StepRecord",
]

MIN_PREFIX_LENGTH = 4
"""Shortest run-id prefix :meth:`HistoryStore.get_run` accepts."""

_SUGGESTION_POOL = 2000  # most recent ids compared against an unknown reference
_AMBIGUOUS_SHOWN = 10
MatchedBy = Literal["run_id", "workflow_id", "prefix"]


def _json_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        utc = value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value.to_json() if isinstance(value, _Record) else value


def _json_value_of(obj: Any) -> dict[str, Any]:
    return {f.name: _json_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


class _Record:
    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dictionary (timestamps as ISO 8601 UTC)."""
        return _json_value_of(self)


@dataclasses.dataclass(frozen=True, slots=True)
class StepRecord(_Record):
    """One step attempt, as stored in ``workflow_step_history``."""

    step_index: int
    step_name: str
    attempt: int
    status: str
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    duration_ms: int | None
    message: str | None
    error_type: str | None
    error_message: str | None
    error_stacktrace: str | None
    logs: Any
    span_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class RunSummary(_Record):
    """One run as listed by :meth:`HistoryStore.list_runs` (no metadata, no steps)."""

    run_id: str
    workflow_name: str | None
    workflow_id: str
    status: str
    server_id: str | None
    device_type: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    duration_ms: int | None
    steps_completed: int
    total_steps: int
    current_step: str | None
    error_type: str | None
    error_message: str | None
    trace_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class RunDetail(RunSummary):
    """One run with every column and its step attempts, from :meth:`HistoryStore.get_run`.

    Attributes:
        steps: the step attempts ordered by ``step_index`` then ``attempt``.
        matched_by: how the reference was resolved: ``run_id``, ``workflow_id`` or ``prefix``.
        other_runs: how many other runs share this run's ``workflow_id``.
    """

    span_id: str | None
    parent_run_id: str | None
    service_name: str | None
    host: str | None
    pid: int | None
    updated_at: dt.datetime | None
    metadata: dict[str, Any]
    steps: list[StepRecord]
    matched_by: MatchedBy
    other_runs: int

    @property
    def context(self) -> dict[str, Any]:
        """The run's context as recorded (already redacted) in ``metadata.context_data``."""
        value = self.metadata.get("context_data")
        return value if isinstance(value, dict) else {}

    @property
    def failed_step(self) -> StepRecord | None:
        """The last attempt that ended ``failed``, if any."""
        return next((s for s in reversed(self.steps) if s.status == "failed"), None)


class RunNotFoundError(LookupError):
    """No run matches the reference given to :meth:`HistoryStore.get_run`.

    Attributes:
        ref: the reference that matched nothing.
        suggestion: the closest existing run id or workflow id, or ``None``.
    """

    def __init__(self, ref: str, suggestion: str | None = None) -> None:
        self.ref = ref
        self.suggestion = suggestion
        message = f"no run found for {ref!r} (tried run id, workflow id and run-id prefix)"
        if len(ref) < MIN_PREFIX_LENGTH:
            message += f"; a run-id prefix needs at least {MIN_PREFIX_LENGTH} characters"
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        super().__init__(message)


class AmbiguousRunError(LookupError):
    """A run-id prefix matches several runs.

    Attributes:
        ref: the prefix.
        candidates: the matching run ids (at most ten), newest first.
    """

    def __init__(self, ref: str, candidates: Sequence[str]) -> None:
        self.ref = ref
        self.candidates = list(candidates)
        super().__init__(
            f"{ref!r} matches several runs ({', '.join(self.candidates)}); give more characters"
        )


_H = workflow_history.c
_S = workflow_step_history.c
_SUMMARY_FIELDS = [f.name for f in dataclasses.fields(RunSummary)]
_DETAIL_COLUMNS = [f.name for f in dataclasses.fields(RunDetail) if f.name in _H]
_STEP_FIELDS = [f.name for f in dataclasses.fields(StepRecord)]


def _newest_first() -> tuple[ColumnElement[Any], ...]:
    # NULL started_at last on every dialect (MariaDB has no NULLS LAST).
    return (case((_H.started_at.is_(None), 1), else_=0), _H.started_at.desc(), _H.id.desc())


class HistoryStore:
    """Queries over the history tables of one database.

    Args:
        engine: the engine to query.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str | URL | None = None) -> Self:
        """Open the store on *url* (default: ``FLOWTEL_DATABASE_URL`` or ``flowtel.db``).

        Raises:
            DatabaseURLError: the URL cannot be parsed or its driver is missing.
        """
        return cls(make_engine(url))

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
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int = 50,
    ) -> list[RunSummary]:
        """Return the runs matching every given filter, newest first.

        Args:
            status: a run status such as ``failed``.
            workflow: the workflow's name (``provision_server``).
            workflow_id: the logical id (``provision_srv-0042``).
            server_id: the server the run was about.
            since: only runs started at or after this time (naive means UTC).
            until: only runs started before this time (naive means UTC).
            limit: the most runs to return.

        Raises:
            ValueError: *limit* is not positive.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        query = select(*(_H[name] for name in _SUMMARY_FIELDS))
        for column, value in (
            (_H.status, status),
            (_H.workflow_name, workflow),
            (_H.workflow_id, workflow_id),
            (_H.server_id, server_id),
        ):
            if value is not None:
                query = query.where(column == str(value))
        if since is not None:
            query = query.where(_H.started_at >= since)
        if until is not None:
            query = query.where(_H.started_at < until)
        query = query.order_by(*_newest_first()).limit(limit)
        with self.engine.connect() as conn:
            return [RunSummary(**row._asdict()) for row in conn.execute(query)]

    def get_run(self, ref: str) -> RunDetail:
        """Return one run with its steps.

        *ref* is tried, in order, as a full run id, as a workflow id (its latest run) and as
        a run-id prefix of at least :data:`MIN_PREFIX_LENGTH` characters.

        Raises:
            RunNotFoundError: nothing matches; the message suggests the closest id.
            AmbiguousRunError: *ref* is a prefix of several run ids.
        """
        ref = ref.strip()
        with self.engine.connect() as conn:
            found = self._resolve(conn, ref)
            if found is None:
                raise RunNotFoundError(ref, self._suggest(conn, ref))
            return self._detail(conn, *found)

    def _resolve(self, conn: Connection, ref: str) -> tuple[Row[Any], MatchedBy] | None:
        base = select(*(_H[name] for name in _DETAIL_COLUMNS))
        # Each candidate is re-checked in Python: MariaDB compares strings case-insensitively.
        row = conn.execute(base.where(_H.run_id == ref)).first()
        if row is not None and row.run_id == ref:
            return row, "run_id"
        query = base.where(_H.workflow_id == ref).order_by(*_newest_first()).limit(1)
        row = conn.execute(query).first()
        if row is not None and row.workflow_id == ref:
            return row, "workflow_id"
        if len(ref) < MIN_PREFIX_LENGTH:
            return None
        query = base.where(_H.run_id.startswith(ref, autoescape=True))
        query = query.order_by(*_newest_first()).limit(_AMBIGUOUS_SHOWN + 1)
        rows = [r for r in conn.execute(query) if r.run_id.startswith(ref)]
        if len(rows) > 1:
            raise AmbiguousRunError(ref, [r.run_id for r in rows[:_AMBIGUOUS_SHOWN]])
        return (rows[0], "prefix") if rows else None

    def _detail(self, conn: Connection, row: Row[Any], matched_by: MatchedBy) -> RunDetail:
        steps_query = (
            select(*(_S[name] for name in _STEP_FIELDS))
            .where(_S.run_id == row.run_id)
            .order_by(_S.step_index, _S.attempt, _S.started_at, _S.id)
        )
        steps = [StepRecord(**r._asdict()) for r in conn.execute(steps_query)]
        others = conn.execute(
            select(func.count()).where(_H.workflow_id == row.workflow_id, _H.run_id != row.run_id)
        ).scalar_one()
        values = row._asdict()
        values["metadata"] = values["metadata"] if isinstance(values["metadata"], dict) else {}
        return RunDetail(**values, steps=steps, matched_by=matched_by, other_runs=others)

    def _suggest(self, conn: Connection, ref: str) -> str | None:
        recent = select(_H.run_id, _H.workflow_id).order_by(*_newest_first())
        candidates: dict[str, str] = {}
        for run_id, workflow_id in conn.execute(recent.limit(_SUGGESTION_POOL)):
            candidates.setdefault(workflow_id, workflow_id)
            # Compare a short reference with the same number of leading characters.
            candidates.setdefault(run_id[: max(len(ref), 8)], run_id)
        close = difflib.get_close_matches(ref, list(candidates), n=1, cutoff=0.6)
        return candidates[close[0]] if close else None
