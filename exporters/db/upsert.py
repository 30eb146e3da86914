"""Idempotent, monotonic upserts of run and step rows, one statement per dialect.

A run row is replaced only by a snapshot with a larger ``seq`` and never once it holds a final
status (``completed``, ``failed``, ``cancelled``); ``abandoned`` (set by the reaper) is not
final, so the owning process's late terminal write still wins. A step row is replaced only
while it is ``running``. Duplicates, retries, replays and out-of-order batches therefore leave
the same rows. SQLite and PostgreSQL use ``ON CONFLICT ... DO UPDATE ... WHERE``; MariaDB and
MySQL use ``ON DUPLICATE KEY UPDATE`` with every column guarded by ``IF(...)`` and the guard
columns assigned last (MySQL evaluates the assignments left to right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, and_, func, literal_column, not_
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Executable

from exporters.db.schema import RUN_COLUMNS, STEP_COLUMNS, workflow_history, workflow_step_history
from exporters.errors import UnsupportedDatabaseError
from instrumentation.attributes import FINAL_RUN_STATUSES, StepStatus

__all__ = ["UnsupportedDatabaseError", "run_upsert", "step_upsert", "upsert_rows"]

_FINAL = sorted(s.value for s in FINAL_RUN_STATUSES)


def _on_conflict(
    dialect: str, table: Table, key: str, columns: Sequence[str], guard: Any
) -> Executable:
    module: Any = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(table)
    excluded = stmt.excluded
    condition = guard(table.c, excluded)
    upsert: Executable = stmt.on_conflict_do_update(
        index_elements=[key],
        set_={name: excluded[name] for name in columns if name != key},
        where=condition,
    )
    return upsert


def _run_guard(target: Any, new: Any) -> ColumnElement[bool]:
    # literal values: an expanding IN parameter cannot be used with executemany()
    finals: list[ColumnElement[str]] = [literal_column(f"'{status}'") for status in _FINAL]
    condition: ColumnElement[bool] = and_(target.seq < new.seq, not_(target.status.in_(finals)))
    return condition


def _step_guard(target: Any, new: Any) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = target.status == literal_column(
        f"'{StepStatus.RUNNING.value}'"
    )
    return condition


def _mysql(table: Table, key: str, columns: Sequence[str], last: Sequence[str], cond: str) -> Any:
    stmt = mysql.insert(table)
    new = stmt.inserted
    ordered = [c for c in columns if c != key and c not in last] + list(last)
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
_MYSQL_STEP_COND = f"`status` = '{StepStatus.RUNNING.value}'"

_cache: dict[tuple[str, str], Executable] = {}


def _statement(dialect: str, kind: str) -> Executable:
    cached = _cache.get((dialect, kind))
    if cached is not None:
        return cached
    if dialect in ("sqlite", "postgresql"):
        if kind == "run":
            stmt = _on_conflict(dialect, workflow_history, "run_id", RUN_COLUMNS, _run_guard)
        else:
            stmt = _on_conflict(
                dialect, workflow_step_history, "span_id", STEP_COLUMNS, _step_guard
            )
    elif dialect in ("mysql", "mariadb"):
        if kind == "run":
            stmt = _mysql(
                workflow_history, "run_id", RUN_COLUMNS, ("status", "seq"), _MYSQL_RUN_COND
            )
        else:
            stmt = _mysql(
                workflow_step_history, "span_id", STEP_COLUMNS, ("status",), _MYSQL_STEP_COND
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


def upsert_rows(
    connection: Connection,
    run_rows: Sequence[dict[str, Any]],
    step_rows: Sequence[dict[str, Any]],
) -> None:
    """Upsert *run_rows* and *step_rows* on *connection* (inside the caller's transaction)."""
    dialect = connection.dialect.name
    if run_rows:
        connection.execute(run_upsert(dialect), list(run_rows))
    if step_rows:
        connection.execute(step_upsert(dialect), list(step_rows))
