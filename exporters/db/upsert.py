"""Idempotent, monotonic upserts of run and step rows, one statement per dialect.

The ordering rules live here and nowhere else (:func:`run_replaces`, :func:`step_replaces`, and
their SQL twins from which every dialect's statement is built; the spool replay's fold calls the
Python ones). A run row keeps the snapshot with the greatest ``(rank, seq)``: a final status
(``completed``, ``cancelled``, ``failed``) beats one that is not whatever the ``seq`` (a wall
clock, possibly another host's) says, ``failed`` beats ``cancelled`` beats ``completed``, and
within one rank the larger ``seq`` wins; ``abandoned`` (set by the reaper) is not final, so the
owning process's late terminal write still wins. A step row is keyed by its run
and span id (:data:`~exporters.db.schema.STEP_KEY`) and replaced only while it is ``running``
(or ``abandoned`` by the reaper) and only by the same step attempt; a row of another step under
the same key is a *conflict*,
counted in :class:`UpsertResult` and logged, never written. Duplicates, retries, replays and
out-of-order batches therefore leave the same rows. SQLite and PostgreSQL use ``ON CONFLICT ...
DO UPDATE ... WHERE``; MariaDB and MySQL use ``ON DUPLICATE KEY UPDATE`` with every column
guarded by ``IF(...)`` on the guard, evaluated once per row.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, and_, case, func, literal_column, or_, select, tuple_
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Executable
from sqlalchemy.sql.elements import Grouping

from exporters.db.schema import (
    RUN_COLUMNS,
    STEP_COLUMNS,
    STEP_KEY,
    workflow_history,
    workflow_step_history,
)
from exporters.errors import UnsupportedDatabaseError
from instrumentation.attributes import FINAL_RUN_STATUSES, RunStatus, StepStatus

__all__ = [
    "FINAL_STATUS_ORDER",
    "UnsupportedDatabaseError",
    "UpsertResult",
    "count_step_conflicts",
    "other_step",
    "run_replaces",
    "run_status_rank",
    "run_upsert",
    "step_replaces",
    "step_upsert",
    "upsert_rows",
]

logger = logging.getLogger("flowtel.db")

_STEP_IDENTITY = ("step_index", "attempt")
"""What tells two steps apart under one key: a row with another identity is a conflict."""
_CONFLICTS_SHOWN = 5


@dataclasses.dataclass(frozen=True, slots=True)
class UpsertResult:
    """What one upsert of run and step rows did.

    Attributes:
        runs: run rows sent.
        steps: step rows sent.
        step_conflicts: step rows not written because another step already holds their
            ``(run_id, span_id)`` (each is logged at WARNING on ``flowtel.db``).
    """

    runs: int = 0
    steps: int = 0
    step_conflicts: int = 0


FINAL_STATUS_ORDER: tuple[RunStatus, ...] = (
    RunStatus.COMPLETED,
    RunStatus.CANCELLED,
    RunStatus.FAILED,
)
"""The final run statuses from weakest to strongest: a later one replaces an earlier one."""
if frozenset(FINAL_STATUS_ORDER) != FINAL_RUN_STATUSES:  # pragma: no cover - a new status
    raise AssertionError("FINAL_STATUS_ORDER must list exactly FINAL_RUN_STATUSES")

_RANK: dict[str, int] = {status.value: n for n, status in enumerate(FINAL_STATUS_ORDER, 1)}


def run_status_rank(status: str) -> int:
    """0 for a status that is not final (``running``, ``pending``, ``abandoned`` ...), else its
    place in :data:`FINAL_STATUS_ORDER` counted from 1."""
    return _RANK.get(status, 0)


def run_replaces(current_status: str, current_seq: int, new_status: str, new_seq: int) -> bool:
    """THE rule for run rows: whether a snapshot (*new_status*, *new_seq*) replaces the stored
    one (*current_status*, *current_seq*) of the same run.

    A run row holds the snapshot with the greatest ``(rank, seq)``: a final status beats a
    status that is not final whatever the ``seq`` (a wall clock) says; between final statuses
    ``failed`` beats ``cancelled`` beats ``completed``; within one rank the larger ``seq`` wins.
    The order is total up to equal keys, so any order of any set of snapshots leaves one row.
    :func:`_run_guard` is this function in SQL, and every dialect's statement is built from it.
    """
    current, new = run_status_rank(current_status), run_status_rank(new_status)
    return new > current or (new == current and new_seq > current_seq)


def _rank_sql(status: Any) -> ColumnElement[int]:
    # literal values: bound parameters would be repeated per row in the multi-row statements
    whens: list[tuple[Any, Any]] = [
        (status == literal_column(f"'{name}'"), literal_column(str(n))) for name, n in _RANK.items()
    ]
    rank: ColumnElement[int] = case(*whens, else_=literal_column("0"))
    return rank


def _run_guard(target: Any, new: Any) -> ColumnElement[bool]:
    """:func:`run_replaces` in SQL: *target* is the stored row, *new* the incoming one."""
    current, incoming = _rank_sql(target.status), _rank_sql(new.status)
    condition: ColumnElement[bool] = or_(
        incoming > current, and_(incoming == current, target.seq < new.seq)
    )
    return condition


def _on_conflict(
    dialect: str, table: Table, key: Sequence[str], columns: Sequence[str], guard: Any
) -> Executable:
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(table)
    excluded = stmt.excluded
    condition = guard(table.c, excluded)
    upsert: Executable = stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={name: excluded[name] for name in columns if name not in key},
        where=condition,
    )
    return upsert


def other_step(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether step rows *current* and *new*, under one key, are different step attempts (a
    conflict: *new* is never written over *current*)."""
    return any(current[name] != new[name] for name in _STEP_IDENTITY)


_OPEN_STEP_STATUSES = (StepStatus.RUNNING.value, RunStatus.ABANDONED.value)
"""A step row in these may still change: ``running``, or ``abandoned`` by the reaper (a process
that was only stalled, not dead, still lands its step's end, as it does its run's)."""


def step_replaces(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """THE rule for step rows: whether step row *new* replaces *current* (same key): only a
    ``running`` or reaped (``abandoned``) row, and only by the same step attempt.
    :func:`_step_guard` in SQL."""
    return current["status"] in _OPEN_STEP_STATUSES and all(
        current[name] == new[name] for name in _STEP_IDENTITY
    )


def _step_guard(target: Any, new: Any) -> ColumnElement[bool]:
    running = target.status.in_([literal_column(f"'{s}'") for s in _OPEN_STEP_STATUSES])
    same_step = [target[name] == new[name] for name in _STEP_IDENTITY]
    condition: ColumnElement[bool] = and_(running, *same_step)
    return condition


def _mysql(table: Table, key: Sequence[str], columns: Sequence[str], guard: Any) -> Any:
    """``ON DUPLICATE KEY UPDATE`` with every column under the same guard. MySQL assigns left
    to right, so a later column's guard would see earlier columns already replaced: the guard is
    evaluated once, on the stored values, into a session variable in the first assignment."""
    stmt = mysql.insert(table)
    new = stmt.inserted
    flag: ColumnElement[Any] = literal_column(f"@flowtel_{table.name}_replaces")
    assignments: list[tuple[str, Any]] = []
    for name in (c for c in columns if c not in key):
        test = flag if assignments else Grouping(flag.op(":=")(Grouping(guard(table.c, new))))
        assignments.append((name, func.IF(test, new[name], table.c[name])))
    return stmt.on_duplicate_key_update(assignments)


_ON_CONFLICT = ("sqlite", "postgresql")
"""Dialects with ``ON CONFLICT ... DO UPDATE ... WHERE`` (the others: ``ON DUPLICATE KEY``)."""
_cache: dict[tuple[str, str], Executable] = {}


def _statement(dialect: str, kind: str) -> Executable:
    cached = _cache.get((dialect, kind))
    if cached is not None:
        return cached
    if dialect in _ON_CONFLICT:
        if kind == "run":
            stmt = _on_conflict(dialect, workflow_history, ("run_id",), RUN_COLUMNS, _run_guard)
        else:
            stmt = _on_conflict(dialect, workflow_step_history, STEP_KEY, STEP_COLUMNS, _step_guard)
    elif dialect in ("mysql", "mariadb"):
        if kind == "run":
            stmt = _mysql(workflow_history, ("run_id",), RUN_COLUMNS, _run_guard)
        else:
            stmt = _mysql(workflow_step_history, STEP_KEY, STEP_COLUMNS, _step_guard)
    else:
        raise UnsupportedDatabaseError(
            f"flowtel cannot write history to a {dialect!r} database; "
            "supported: sqlite, postgresql, mysql/mariadb"
        )
    _cache[(dialect, kind)] = stmt
    return stmt


def _returning(dialect: str, kind: str, returning: bool) -> Executable:
    """The cached upsert, with ``RETURNING id`` when *returning* (insertmanyvalues batches
    ``executemany`` into multi-row statements only for statements that return rows)."""
    if not returning:
        return _statement(dialect, kind)
    key = (dialect, f"{kind}+returning")
    cached = _cache.get(key)
    if cached is None:
        table = workflow_history if kind == "run" else workflow_step_history
        statement: Any = _statement(dialect, kind)
        cached = _cache[key] = statement.returning(table.c.id)
    return cached


def run_upsert(dialect: str) -> Executable:
    """The cached run-row upsert statement for *dialect* (execute with a list of rows)."""
    return _statement(dialect, "run")


def step_upsert(dialect: str) -> Executable:
    """The cached step-row upsert statement for *dialect* (execute with a list of rows)."""
    return _statement(dialect, "step")


def count_step_conflicts(
    connection: Connection, step_rows: Sequence[dict[str, Any]], written: int | None = None
) -> int:
    """Count (and log) the *step_rows* refused because another step holds their key.

    Call it right after upserting *step_rows* on *connection*. When the driver reported how
    many rows the upsert wrote (*written*) and that is all of them, nothing was refused and no
    query is made; otherwise the stored identity of the batch's keys is read back and compared.
    A refused row of the same step (a replayed end of a finished step) is no conflict.
    """
    if not step_rows or (written is not None and written >= len(step_rows)):
        return 0
    t = workflow_step_history
    key = tuple_(*(t.c[name] for name in STEP_KEY))
    identity: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for offset in range(0, len(step_rows), 500):
        chunk = step_rows[offset : offset + 500]
        query = select(*(t.c[name] for name in STEP_KEY + _STEP_IDENTITY)).where(
            key.in_([tuple(row[name] for name in STEP_KEY) for row in chunk])
        )
        for stored in connection.execute(query):
            identity[tuple(stored[: len(STEP_KEY)])] = tuple(stored[len(STEP_KEY) :])
    conflicts = [
        row
        for row in step_rows
        if identity.get(tuple(row[name] for name in STEP_KEY), ())
        not in ((), tuple(row[name] for name in _STEP_IDENTITY))
    ]
    if conflicts:
        shown = ", ".join(
            f"run {row['run_id']} span {row['span_id']} step {row['step_index']}"
            for row in conflicts[:_CONFLICTS_SHOWN]
        )
        more = len(conflicts) - _CONFLICTS_SHOWN
        logger.warning(
            "flowtel kept %d step row(s) out of the history: another step of the same run holds "
            "the same span id (%s%s); the application's id generator repeats span ids",
            len(conflicts),
            shown,
            f" and {more} more" if more > 0 else "",
        )
    return len(conflicts)


def upsert_rows(
    connection: Connection,
    run_rows: Sequence[dict[str, Any]],
    step_rows: Sequence[dict[str, Any]],
) -> UpsertResult:
    """Upsert *run_rows* and *step_rows* on *connection* (inside the caller's transaction).

    Where the dialect batches ``executemany`` with ``RETURNING`` into multi-row statements
    (SQLAlchemy's public "insertmanyvalues": SQLite, PostgreSQL) the statements return the ids
    of the rows they wrote, which also tells whether any step row was refused; elsewhere
    (MariaDB/MySQL, whose driver already rewrites ``executemany`` into multi-row statements)
    they run as a plain ``executemany``.
    """
    dialect = connection.dialect
    returning = dialect.name in _ON_CONFLICT and bool(
        getattr(dialect, "insert_executemany_returning", False)
    )
    if run_rows:
        connection.execute(_returning(dialect.name, "run", returning), list(run_rows))
    written: int | None = None
    if step_rows:
        result = connection.execute(_returning(dialect.name, "step", returning), list(step_rows))
        written = len(result.all()) if returning else None
    conflicts = count_step_conflicts(connection, step_rows, written)
    return UpsertResult(len(run_rows), len(step_rows), conflicts)
