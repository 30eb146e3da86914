"""Multi-row upserts: one statement for many rows, built once per dialect and chunk size.

``executemany`` runs one statement per row. On SQLite each row's ``sqlite3_step`` releases the
GIL, and a writer thread that gives the GIL away thousands of times per batch must win it back
from a busy application thread each time: measured here, it committed almost nothing until the
application paused. A single ``INSERT ... VALUES (...), (...), ... ON CONFLICT`` statement
releases it once per chunk and is also cheaper for the server. The statement text comes from
compiling the dialect's single-row upsert (see :mod:`exporters.upsert`) and repeating its
``VALUES`` group; values pass through each column type's own bind processor, so rows are
stored exactly as SQLAlchemy Core would store them. MySQL/MariaDB keep ``executemany``, which
PyMySQL already rewrites into multi-row statements.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

from .upsert import run_upsert, step_upsert

__all__ = ["BulkUpsert", "bulk_upsert_rows"]

_MAX_PARAMETERS = {"sqlite": 30_000, "postgresql": 60_000}
_MAX_ROWS_PER_STATEMENT = 1_000
_RETURNING = re.compile(r"\s+RETURNING\s.*$", re.S)


def _values_group(sql: str) -> tuple[int, int]:
    """Start and end offsets of the parenthesised group after ``VALUES``."""
    start = sql.index(" VALUES (") + len(" VALUES ")
    depth = 0
    for position in range(start, len(sql)):
        char = sql[position]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return start, position + 1
    raise ValueError("unbalanced VALUES clause")  # pragma: no cover - compiler output


class BulkUpsert:
    """The multi-row form of one table's upsert on one dialect."""

    def __init__(self, dialect: Dialect, table: Table, statement: Any, columns: Sequence[str]):
        positional = dialect
        if dialect.paramstyle not in ("qmark", "format"):
            positional = type(dialect)(paramstyle="format")  # type: ignore[call-arg]
        compiled = statement.compile(dialect=positional, column_keys=list(columns))
        sql = _RETURNING.sub("", compiled.string)
        start, end = _values_group(sql)
        self._head, self._group, self._tail = sql[:start], sql[start:end], sql[end:]
        order = list(compiled.positiontup or columns)
        self.columns = tuple(order)
        self._processors: list[tuple[str, Callable[[Any], Any] | None]] = [
            (name, table.c[name].type._cached_bind_processor(dialect)) for name in order
        ]
        limit = _MAX_PARAMETERS.get(dialect.name, 30_000) // max(len(order), 1)
        self.chunk_rows = max(1, min(_MAX_ROWS_PER_STATEMENT, limit))
        self._sql: dict[int, str] = {}

    def sql(self, rows: int) -> str:
        """The statement text for *rows* rows (cached per count)."""
        text = self._sql.get(rows)
        if text is None:
            text = self._head + ", ".join([self._group] * rows) + self._tail
            self._sql[rows] = text
        return text

    def parameters(self, rows: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
        """The flat, bind-processed parameter tuple for *rows*."""
        processors = self._processors
        flat: list[Any] = []
        append = flat.append
        for row in rows:
            for name, processor in processors:
                value = row[name]
                append(processor(value) if processor is not None and value is not None else value)
        return tuple(flat)

    def execute(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Upsert *rows* in as few statements as the dialect's parameter limit allows."""
        size = self.chunk_rows
        for offset in range(0, len(rows), size):
            chunk = rows[offset : offset + size]
            connection.exec_driver_sql(self.sql(len(chunk)), self.parameters(chunk))


_cache: dict[tuple[str, str], BulkUpsert] = {}


def _bulk(dialect: Dialect, kind: str) -> BulkUpsert:
    key = (dialect.name, kind)
    bulk = _cache.get(key)
    if bulk is None:
        from .schema import RUN_COLUMNS, STEP_COLUMNS, workflow_history, workflow_step_history

        if kind == "run":
            bulk = BulkUpsert(dialect, workflow_history, run_upsert(dialect.name), RUN_COLUMNS)
        else:
            bulk = BulkUpsert(
                dialect, workflow_step_history, step_upsert(dialect.name), STEP_COLUMNS
            )
        _cache[key] = bulk
    return bulk


def bulk_upsert_rows(
    connection: Connection,
    run_rows: Sequence[dict[str, Any]],
    step_rows: Sequence[dict[str, Any]],
) -> None:
    """Upsert runs and steps with multi-row statements (``executemany`` on MySQL/MariaDB)."""
    dialect = connection.dialect
    if dialect.name not in _MAX_PARAMETERS:
        from .upsert import upsert_rows

        upsert_rows(connection, run_rows, step_rows)
        return
    if run_rows:
        _bulk(dialect, "run").execute(connection, run_rows)
    if step_rows:
        _bulk(dialect, "step").execute(connection, step_rows)
