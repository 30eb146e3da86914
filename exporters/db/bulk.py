"""Multi-row upserts: one statement for many rows, built once per dialect and table.

``executemany`` runs one statement per row. On SQLite each row's ``sqlite3_step`` releases the
GIL, and a writer thread that gives the GIL away thousands of times per batch must win it back
from a busy application thread each time: measured here, it committed almost nothing until the
application paused. A single ``INSERT ... VALUES (...), (...), ... ON CONFLICT`` statement
releases it once per chunk and is also cheaper for the server. The statement text comes from
compiling the dialect's single-row upsert (see :mod:`exporters.db.upsert`) and repeating its
``VALUES`` group; values pass through each column type's own bind processor, so rows are
stored exactly as SQLAlchemy Core would store them.

PostgreSQL (psycopg) gets one statement per table and batch whatever its size: ``INSERT ...
SELECT * FROM unnest(%b::type[], ...) ON CONFLICT ...`` with one array parameter per column,
sent in binary. Its text is short and constant, so psycopg parses it once and the server
prepares it once, where a thousand-row ``VALUES`` list was re-parsed on every execution
(psycopg only caches short queries): measured, bind and SQL went from 1,150 to 120 us of the
writer's CPU per 23-step workflow (``benchmarks/README.md``). A durable point's batch (one
run, one step) uses the ``VALUES`` form there too, cheaper to bind (:data:`SMALL_BATCH_ROWS`).
A batch with both run and step rows is one statement (:class:`BatchUpsert`), so that the
writer's connection, in autocommit, commits it in one round trip. Text-format arrays cost 650 us
(psycopg escapes them in Python); COPY into a temporary table followed by ``INSERT ... SELECT
... ON CONFLICT`` was no faster than ``unnest`` and takes two more round trips.

MySQL/MariaDB keep ``executemany``, which PyMySQL already rewrites into multi-row statements.

Why not SQLAlchemy 2's public insertmanyvalues (``execute(upsert.returning(id), rows)``, see
:func:`exporters.db.upsert.upsert_rows`)? ``benchmarks/bench_bulk.py`` (comparison 7) measures
both on the writer's rows: this path commits them in 0.69x the public path's time on SQLite and
0.23x on PostgreSQL, beyond the 10 % that would make the public path the choice; on MariaDB
both are the same ``executemany`` and :func:`bulk_upsert_rows` uses the public one. The only
SQLAlchemy API used here is public (compiled statement text and ``positiontup``, each column
type's ``dialect_impl().bind_processor()``); the statement text is read, so SQLAlchemy is
pinned below its next minor release in ``pyproject.toml``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection, Dialect

from exporters.db.upsert import UpsertResult, count_step_conflicts, run_upsert, step_upsert

__all__ = [
    "SMALL_BATCH_ROWS",
    "ArrayUpsert",
    "BatchUpsert",
    "BulkUpsert",
    "bulk_upsert_rows",
    "one_statement_batches",
]

_MAX_PARAMETERS = {"sqlite": 30_000, "postgresql": 60_000}
_MAX_ROWS_PER_STATEMENT = 1_000
_RETURNING = re.compile(r"\s+RETURNING\s.*$", re.S)
_CAST = re.compile(r"%s(?:::([A-Z][A-Z0-9_ ]*(?:\(\d+(?:,\s*\d+)?\))?))?")


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


class _Compiled:
    """A table's single-row upsert compiled positionally, split around its ``VALUES`` group."""

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
        self._getter: Callable[[dict[str, Any]], Any] = (
            itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],)
        )
        self._processors: list[tuple[int, Callable[[Any], Any]]] = []
        for position, name in enumerate(order):
            kind = table.c[name].type
            processor = kind.dialect_impl(dialect).bind_processor(dialect)  # public API
            if processor is not None:
                self._processors.append((position, processor))

    def values(self, row: dict[str, Any]) -> tuple[Any, ...] | list[Any]:
        """*row*'s bind-processed values in statement order."""
        got: tuple[Any, ...] = self._getter(row)
        if not self._processors:
            return got
        values = list(got)
        for position, processor in self._processors:
            value = values[position]
            if value is not None:
                values[position] = processor(value)
        return values


class BulkUpsert(_Compiled):
    """The multi-row ``VALUES`` form of one table's upsert on one dialect."""

    def __init__(self, dialect: Dialect, table: Table, statement: Any, columns: Sequence[str]):
        super().__init__(dialect, table, statement, columns)
        limit = _MAX_PARAMETERS.get(dialect.name, 30_000) // max(len(self.columns), 1)
        self.chunk_rows = max(1, min(_MAX_ROWS_PER_STATEMENT, limit))
        self._sql: dict[int, str] = {}

    def text(self, rows: int) -> str:
        """The statement text for *rows* rows (at most :attr:`chunk_rows`)."""
        return self.sql(rows)

    def sql(self, rows: int) -> str:
        """The statement text for *rows* rows (cached per count)."""
        text = self._sql.get(rows)
        if text is None:
            text = self._head + ", ".join([self._group] * rows) + self._tail
            self._sql[rows] = text
        return text

    def parameters(self, rows: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
        """The flat, bind-processed parameter tuple for *rows*."""
        flat: list[Any] = []
        extend = flat.extend
        values = self.values
        for row in rows:
            extend(values(row))
        return tuple(flat)

    def execute(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Upsert *rows* in as few statements as the dialect's parameter limit allows; return
        how many rows were inserted or updated."""
        size = self.chunk_rows
        written = 0
        for offset in range(0, len(rows), size):
            chunk = rows[offset : offset + size]
            result = connection.exec_driver_sql(self.sql(len(chunk)), self.parameters(chunk))
            written += result.rowcount
        return written


class ArrayUpsert(_Compiled):
    """PostgreSQL: ``INSERT ... SELECT * FROM unnest(<one array per column>) ON CONFLICT``."""

    def __init__(self, dialect: Dialect, table: Table, statement: Any, columns: Sequence[str]):
        super().__init__(dialect, table, statement, columns)
        casts = _CAST.findall(self._group)
        if len(casts) != len(self.columns):  # pragma: no cover - compiler output
            raise ValueError(f"cannot read the parameter types of {self._group!r}")
        arrays = []
        for name, cast in zip(self.columns, casts, strict=True):
            kind = cast or table.c[name].type.compile(dialect=dialect)
            arrays.append(f"%b::{kind}[]")  # binary: psycopg dumps those lists in C
        head = self._head[: -len("VALUES ")]
        self.sql = f"{head}SELECT * FROM unnest({', '.join(arrays)}){self._tail}"

    def text(self, rows: int) -> str:
        """The statement text, the same for any number of rows."""
        return self.sql

    def parameters(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Any], ...]:
        """One list per column, bind-processed."""
        values = self.values
        return tuple(list(column) for column in zip(*[values(row) for row in rows], strict=True))

    def execute(self, connection: Connection, rows: Sequence[dict[str, Any]]) -> int:
        """Upsert *rows* with one statement; return how many were inserted or updated."""
        if not rows:
            return 0
        return connection.exec_driver_sql(self.sql, self.parameters(rows)).rowcount


class BatchUpsert:
    """PostgreSQL: a batch's run and step rows in ONE statement, ``WITH runs AS (<run upsert>)
    <step upsert>``, the runs' parameters bound first (their text comes first).

    A data-modifying ``WITH`` runs whether or not the outer statement reads it, and the
    statement's row count is the outer upsert's (the step rows written, which
    :func:`~exporters.db.upsert.count_step_conflicts` needs). One statement is atomic by
    itself, so on a connection in autocommit mode a whole batch costs one round trip instead
    of four (``BEGIN``, two upserts, ``COMMIT``): that is most of a durable point's wait.
    """

    def __init__(self, runs: BulkUpsert | ArrayUpsert, steps: BulkUpsert | ArrayUpsert) -> None:
        self.runs, self.steps = runs, steps
        self._sql: dict[tuple[int, int], str] = {}

    def execute(
        self,
        connection: Connection,
        run_rows: Sequence[dict[str, Any]],
        step_rows: Sequence[dict[str, Any]],
    ) -> int:
        """Upsert both; return how many step rows were inserted or updated."""
        counts = (len(run_rows), len(step_rows))
        key = counts if isinstance(self.runs, BulkUpsert) else (0, 0)  # arrays: one text
        sql = self._sql.get(key)
        if sql is None:
            sql = f"WITH runs AS ({self.runs.text(counts[0])}) {self.steps.text(counts[1])}"
            self._sql[key] = sql
        parameters = self.runs.parameters(run_rows) + self.steps.parameters(step_rows)
        return connection.exec_driver_sql(sql, parameters).rowcount


SMALL_BATCH_ROWS = 2
"""On PostgreSQL, a batch of at most this many rows (runs and steps: one durable point's run
and step) is sent as a ``VALUES`` list, larger ones as ``unnest`` arrays. Binding an array makes
psycopg look at its elements in Python, a fixed cost per column that a batch of one run and one
step pays in full: measured on one PostgreSQL, 637 µs of CPU and 1.10 ms of wall time as arrays
against 175 µs and 0.45 ms as ``VALUES``. Larger ``VALUES`` batches bound faster too when one
text repeats, but every row count is a text of its own, which psycopg does not prepare and the
server parses each time: with eight threads under ``durability="step"`` (batches of 2-16 rows)
a limit of 16 committed 1,297-1,320 steps/s against 1,566-1,834 with this one."""

_cache: dict[tuple[str, str, str, bool], BulkUpsert | ArrayUpsert] = {}
_batches: dict[tuple[str, str, bool], BatchUpsert] = {}


def _bulk(dialect: Dialect, kind: str, *, small: bool = False) -> BulkUpsert | ArrayUpsert:
    arrays = _arrays(dialect) and not small
    key = (dialect.name, dialect.driver, kind, arrays)
    bulk = _cache.get(key)
    if bulk is None:
        from exporters.db.schema import (
            RUN_COLUMNS,
            STEP_COLUMNS,
            workflow_history,
            workflow_step_history,
        )

        form = ArrayUpsert if arrays else BulkUpsert
        if kind == "run":
            bulk = form(dialect, workflow_history, run_upsert(dialect.name), RUN_COLUMNS)
        else:
            bulk = form(dialect, workflow_step_history, step_upsert(dialect.name), STEP_COLUMNS)
        _cache[key] = bulk
    return bulk


def one_statement_batches(dialect: Dialect) -> bool:
    """Whether :func:`bulk_upsert_rows` writes any batch with one data-changing statement on
    *dialect* (then a connection in autocommit mode commits the batch atomically, in one round
    trip)."""
    return _arrays(dialect)


def _arrays(dialect: Dialect) -> bool:
    """Whether *dialect* takes whole columns as array parameters (PostgreSQL with psycopg)."""
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


def bulk_upsert_rows(
    connection: Connection,
    run_rows: Sequence[dict[str, Any]],
    step_rows: Sequence[dict[str, Any]],
) -> UpsertResult:
    """Upsert runs and steps with multi-row statements (``executemany`` on MySQL/MariaDB)."""
    dialect = connection.dialect
    if dialect.name not in _MAX_PARAMETERS:
        from exporters.db.upsert import upsert_rows

        return upsert_rows(connection, run_rows, step_rows)
    conflicts = 0
    small = len(run_rows) + len(step_rows) <= SMALL_BATCH_ROWS
    if run_rows and step_rows and _arrays(dialect):
        key = (dialect.name, dialect.driver, small)
        batch = _batches.get(key)
        if batch is None:
            runs, steps = _bulk(dialect, "run", small=small), _bulk(dialect, "step", small=small)
            batch = _batches[key] = BatchUpsert(runs, steps)
        written = batch.execute(connection, run_rows, step_rows)
        conflicts = count_step_conflicts(connection, step_rows, written)
        return UpsertResult(len(run_rows), len(step_rows), conflicts)
    if run_rows:
        _bulk(dialect, "run", small=small).execute(connection, run_rows)
    if step_rows:
        written = _bulk(dialect, "step", small=small).execute(connection, step_rows)
        conflicts = count_step_conflicts(connection, step_rows, written)
    return UpsertResult(len(run_rows), len(step_rows), conflicts)
