"""What the web view asks of the history beyond :class:`~exporters.query.store.HistoryStore`.

:func:`runs_page` lists runs with ``flowtel runs``'s filters one page at a time: newest first
by ``(started_at, id)``, continued by an opaque cursor that names the last row shown, so every
page is one range scan on the ``started_at`` indexes however deep the reader goes (runs
without a start time follow, by ``id``). :func:`live_snapshot` is what the live stream polls:
the runs in progress (``status`` index) plus the newest few (``started_at`` index), and the
current state of runs that just left the first set (``run_id`` index). :func:`legacy_rows` returns
rows in the old ``workflow_history`` table's shape. Free text and JSON are redacted again, as
:meth:`HistoryStore.get_run` does, since rows may come from other writers.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.engine import Connection, Engine

from exporters.db.schema import workflow_history
from exporters.query.records import RunSummary, json_value
from exporters.query.where import where_conditions
from instrumentation import redact
from instrumentation.attributes import ACTIVE_RUN_STATUSES

__all__ = [
    "LEGACY_COLUMNS",
    "BadCursor",
    "RunFilters",
    "RunsPage",
    "legacy_rows",
    "live_snapshot",
    "runs_page",
    "summaries",
]

_H = workflow_history.c
_SUMMARY_FIELDS = [f.name for f in dataclasses.fields(RunSummary)]
_ACTIVE = sorted(status.value for status in ACTIVE_RUN_STATUSES)
LEGACY_COLUMNS = (
    "id", "workflow_id", "server_id", "device_type", "status", "started_at", "completed_at",
    "steps_completed", "total_steps", "error_message", "metadata",
)  # fmt: skip
"""The old ``workflow_history`` table's columns, in its order."""


class BadCursor(ValueError):
    """A ``cursor`` parameter that this server did not hand out."""


@dataclasses.dataclass(frozen=True, slots=True)
class RunFilters:
    """``flowtel runs``'s filters; ``None`` means not filtered."""

    status: str | None = None
    workflow: str | None = None
    workflow_id: str | None = None
    server_id: str | None = None
    device_type: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    where: tuple[tuple[str, str], ...] = ()
    """Context pairs that must all match (``flowtel runs --where``; applied by
    :func:`runs_page`, which has the connection the index lookup needs)."""

    def apply(self, query: Select[Any]) -> Select[Any]:
        """*query* restricted to the runs these filters select (all but :attr:`where`)."""
        for column, value in (
            (_H.status, self.status),
            (_H.workflow_name, self.workflow),
            (_H.workflow_id, self.workflow_id),
            (_H.server_id, self.server_id),
            (_H.device_type, self.device_type),
        ):
            if value is not None:
                query = query.where(column == value)
        if self.since is not None:
            query = query.where(_H.started_at >= self.since)
        if self.until is not None:
            query = query.where(_H.started_at < self.until)
        return query

    @property
    def dated_only(self) -> bool:
        """Whether only runs with a start time can match (a time window is set)."""
        return self.since is not None or self.until is not None


@dataclasses.dataclass(frozen=True, slots=True)
class RunsPage:
    """One page of runs and the cursor of the next page (``None`` on the last)."""

    runs: list[RunSummary]
    next_cursor: str | None


def _encode(started_at: dt.datetime | None, row_id: int) -> str:
    key = f"d{json_value(started_at)}|{row_id}" if started_at else f"u|{row_id}"
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[dt.datetime | None, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        head, _, row_id = text.rpartition("|")
        if head == "u":
            return None, int(row_id)
        if head.startswith("d"):
            return dt.datetime.fromisoformat(head[1:].replace("Z", "+00:00")), int(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise BadCursor(f"{cursor[:40]!r} is not a cursor this server handed out")


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    for key in ("error_message", "metadata"):
        if values.get(key) is not None:
            values[key] = redact(values[key])
    return values


def summaries(rows: Iterable[Any]) -> list[RunSummary]:
    """Rows holding at least RunSummary's columns as redacted :class:`RunSummary` records."""
    return [RunSummary(**_clean({k: row._mapping[k] for k in _SUMMARY_FIELDS})) for row in rows]


def runs_page(
    engine: Engine, filters: RunFilters, limit: int, cursor: str | None = None
) -> RunsPage:
    """The runs after *cursor* (or the newest) matching *filters*, at most *limit* of them.

    Raises:
        BadCursor: *cursor* was not made by this function.
    """
    after = _decode(cursor) if cursor else None
    base = filters.apply(select(_H.id, *(_H[name] for name in _SUMMARY_FIELDS)))
    rows: list[Any] = []
    with engine.connect() as conn:
        if filters.where:
            base = base.where(*where_conditions(conn, dict(filters.where)))
        if after is None or after[0] is not None:
            dated = base.where(_H.started_at.is_not(None))
            if after is not None:
                started, row_id = after
                # the first condition alone bounds an index range on every dialect
                dated = dated.where(
                    _H.started_at <= started,
                    (_H.started_at < started) | (_H.id < row_id),
                )
            dated = dated.order_by(_H.started_at.desc(), _H.id.desc()).limit(limit + 1)
            rows = list(conn.execute(dated))
        if len(rows) <= limit and not filters.dated_only:
            undated = base.where(_H.started_at.is_(None))
            if after is not None and after[0] is None:
                undated = undated.where(_H.id < after[1])
            undated = undated.order_by(_H.id.desc()).limit(limit + 1 - len(rows))
            rows.extend(conn.execute(undated))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode(rows[-1].started_at, rows[-1].id) if more and rows else None
    return RunsPage(summaries(rows), next_cursor)


def live_snapshot(
    conn: Connection, follow: Iterable[str], newest: int = 20
) -> dict[str, RunSummary]:
    """The runs a live view watches, by run id: in progress, the *newest*, and *follow*.

    *follow* names runs seen before (in progress last time) whose current state is wanted
    even if they finished meanwhile.
    """
    columns = [_H[name] for name in _SUMMARY_FIELDS]
    found: dict[str, RunSummary] = {}
    active = select(*columns).where(_H.status.in_(_ACTIVE), _H.started_at.is_not(None))
    active = active.order_by(_H.started_at.desc()).limit(500)
    recent = select(*columns).where(_H.started_at.is_not(None))
    recent = recent.order_by(_H.started_at.desc(), _H.id.desc()).limit(newest)
    for query in (active, recent):
        for run in summaries(conn.execute(query)):
            found[run.run_id] = run
    missing = [run_id for run_id in follow if run_id not in found]
    for start in range(0, len(missing), 200):
        chunk = missing[start : start + 200]
        for run in summaries(conn.execute(select(*columns).where(_H.run_id.in_(chunk)))):
            found[run.run_id] = run
    return found


def legacy_rows(
    engine: Engine, where: Mapping[str, str | None], limit: int, before_id: int | None
) -> list[dict[str, Any]]:
    """Rows in the old table's shape (:data:`LEGACY_COLUMNS`), highest ``id`` first."""
    query = select(*(_H[name] for name in LEGACY_COLUMNS))
    for name, value in where.items():
        if value is not None:
            query = query.where(_H[name] == value)
    if before_id is not None:
        query = query.where(_H.id < before_id)
    query = query.order_by(_H.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [json_value(_clean(dict(row._mapping))) for row in conn.execute(query)]
