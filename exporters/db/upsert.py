"""Idempotent, monotonic upserts of run and step rows, one statement per dialect.

A run row is replaced only by a snapshot with a larger ``seq`` and never once it holds a final
status (``completed``, ``failed``, ``cancelled``); ``abandoned`` (set by the reaper) is not
final, so the owning process's late terminal write still wins. A step row is keyed by its run
and span id (:data:`~exporters.db.schema.STEP_KEY`) and replaced only while it is ``running``
and only by the same step attempt; a row of another step under the same key is a *conflict*,
counted in :class:`UpsertResult` and logged, never written. Duplicates, retries, replays and
out-of-order batches therefore leave the same rows. SQLite and PostgreSQL use ``ON CONFLICT ...
DO UPDATE ... WHERE``; MariaDB and MySQL use ``ON DUPLICATE KEY UPDATE`` with every column
guarded by ``IF(...)`` and the guard columns assigned last (MySQL evaluates the assignments
left to right).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, and_, func, literal_column, not_, select, tuple_
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Executable

from exporters.db.schema import (
    RUN_COLUMNS,
    STEP_COLUMNS,
    STEP_KEY,
    workflow_history,
    workflow_step_history,
)
from exporters.errors import UnsupportedDatabaseError
from instrumentation.attributes import FINAL_RUN_STATUSES, StepStatus

__all__ = [
    "UnsupportedDatabaseError",
    "UpsertResult",
    "count_step_conflicts",
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


_FINAL = sorted(s.value for s in FINAL_RUN_STATUSES)


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


def _run_guard(target: Any, new: Any) -> ColumnElement[bool]:
    # literal values: an expanding IN parameter cannot be used with executemany()
    finals: list[ColumnElement[str]] = [literal_column(f"'{status}'") for status in _FINAL]
    condition: ColumnElement[bool] = and_(target.seq < new.seq, not_(target.status.in_(finals)))
    return condition


def step_replaces(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether step row *new* replaces *current* (same key): :func:`_step_guard` in Python."""
    return current["status"] == StepStatus.RUNNING and all(
        current[name] == new[name] for name in _STEP_IDENTITY
    )


def _step_guard(target: Any, new: Any) -> ColumnElement[bool]:
    running = target.status == literal_column(f"'{StepStatus.RUNNING.value}'")
    same_step = [target[name] == new[name] for name in _STEP_IDENTITY]
    condition: ColumnElement[bool] = and_(running, *same_step)
    return condition


def _mysql(
    table: Table, key: Sequence[str], columns: Sequence[str], last: Sequence[str], cond: str
) -> Any:
    stmt = mysql.insert(table)
    new = stmt.inserted
    ordered = [c for c in columns if c not in key and c not in last] + list(last)
    assignments: list[tuple[str, Any]] = []
    for name in ordered:
        # When the guard held, status was already replaced by the time seq is assigned, so
        # seq re-checks against the new status instead of the old one.
        text = "`seq` < VALUES(`seq`) AND `status` = VALUES(`status`)" if name == "seq" else cond
        assignments.append((name, func.IF(literal_column(text), new[name], table.c[name])))
    return stmt.on_duplicate_key_update(assignments)


_MYSQL_RUN_COND = "`status` NOT IN ({finals}) AND `seq` < VALUES(`seq`)".format(
    finals=", ".join(f"'{s}'" for s in _FINAL)
)
_MYSQL_STEP_COND = f"`status` = '{StepStatus.RUNNING.value}'" + "".join(
    f" AND `{name}` = VALUES(`{name}`)" for name in _STEP_IDENTITY
)

_cache: dict[tuple[str, str], Executable] = {}


def _statement(dialect: str, kind: str) -> Executable:
    cached = _cache.get((dialect, kind))
    if cached is not None:
        return cached
    if dialect in ("sqlite", "postgresql"):
        if kind == "run":
            stmt = _on_conflict(dialect, workflow_history, ("run_id",), RUN_COLUMNS, _run_guard)
        else:
            stmt = _on_conflict(dialect, workflow_step_history, STEP_KEY, STEP_COLUMNS, _step_guard)
    elif dialect in ("mysql", "mariadb"):
        if kind == "run":
            stmt = _mysql(
                workflow_history, ("run_id",), RUN_COLUMNS, ("status", "seq"), _MYSQL_RUN_COND
            )
        else:
            stmt = _mysql(
                workflow_step_history, STEP_KEY, STEP_COLUMNS, ("status",), _MYSQL_STEP_COND
            )
    else:
        raise UnsupportedDatabaseError(
            f"flowtel cannot write history to a {dialect!r} database; "
            "supported: sqlite, postgresql, mysql/mariadb"
        )
    _cache[(dialect, kind)] = stmt
    return stmt


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
    """Upsert *run_rows* and *step_rows* on *connection* (inside the caller's transaction)."""
    dialect = connection.dialect.name
    if run_rows:
        connection.execute(run_upsert(dialect), list(run_rows))
    if step_rows:
        connection.execute(step_upsert(dialect), list(step_rows))
    conflicts = count_step_conflicts(connection, step_rows)
    return UpsertResult(len(run_rows), len(step_rows), conflicts)
