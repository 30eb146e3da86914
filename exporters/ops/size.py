"""What the history costs: rows and bytes per table and per status (``flowtel db size``).

Bytes per table are the database's own figure for the table with its indexes (and TOAST):
SQLite's ``dbstat``, PostgreSQL's ``pg_total_relation_size``, MariaDB's
``information_schema.tables`` (an estimate InnoDB refreshes now and then). SQLite's
``workflow_context`` (the index behind ``--where``) is listed as a table of its own. Bytes per
status are that total shared out: each row gets an equal share of what is not its variable-length
payload (the JSON and text columns), plus its payload — so failed runs with stack traces weigh
more than completed ones, and the statuses add up to the table. Reading every row's payload
length is a scan of each table: seconds per million runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from exporters.db.context_index import CONTEXT_TABLE, has_context_table
from exporters.db.engine import display_url
from exporters.db.schema import workflow_history, workflow_step_history

__all__ = ["HistorySize", "StatusSize", "TableSize", "history_size"]

_PAYLOAD: dict[str, tuple[str, ...]] = {
    workflow_history.name: ("metadata", "error_message", "current_step", "workflow_id"),
    workflow_step_history.name: (
        "logs",
        "error_stacktrace",
        "error_message",
        "message",
        "step_name",
    ),
}


@dataclasses.dataclass(frozen=True, slots=True)
class StatusSize:
    """Rows of one status in one table and the bytes they take (see the module)."""

    status: str
    rows: int
    bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class TableSize:
    """One table: its rows, its bytes with indexes, and the same per status (if it has one)."""

    table: str
    rows: int
    bytes: int
    statuses: tuple[StatusSize, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class HistorySize:
    """Every history table of one database."""

    database: str
    tables: tuple[TableSize, ...]

    @property
    def bytes(self) -> int:
        """All tables together."""
        return sum(t.bytes for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dictionary."""
        return {"database": self.database, "bytes": self.bytes} | dataclasses.asdict(self)


def _octets(column: sa.ColumnElement[Any], dialect: str) -> sa.ColumnElement[Any]:
    if dialect == "sqlite":
        return sa.func.coalesce(sa.func.length(sa.cast(column, sa.LargeBinary)), 0)
    return sa.func.coalesce(sa.func.octet_length(sa.cast(column, sa.Text)), 0)


def _table_bytes(conn: Connection, table: str) -> int:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        query = (
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = :t OR name IN "
            "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = :t)"
        )
    elif dialect == "postgresql":
        query = "SELECT pg_total_relation_size(CAST(:t AS regclass))"
    else:
        query = (
            "SELECT coalesce(data_length + index_length, 0) FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = :t"
        )
    return int(conn.execute(sa.text(query), {"t": table}).scalar() or 0)


def _table(conn: Connection, table: sa.Table) -> TableSize:
    dialect = conn.dialect.name
    payload = sum((_octets(table.c[name], dialect) for name in _PAYLOAD[table.name]), sa.literal(0))
    query = sa.select(table.c.status, sa.func.count(), sa.func.sum(payload)).group_by(
        table.c.status
    )
    groups = [(str(s), int(n), int(p or 0)) for s, n, p in conn.execute(query)]
    rows = sum(n for _, n, _ in groups)
    total = _table_bytes(conn, table.name)
    payload_total = sum(p for _, _, p in groups)
    if payload_total > total:  # compressed (TOAST): share the total out by payload alone
        scale, per_row = total / payload_total, 0.0
    else:
        scale, per_row = 1.0, (total - payload_total) / rows if rows else 0.0
    statuses = tuple(
        StatusSize(status, n, round(p * scale + n * per_row))
        for status, n, p in sorted(groups, key=lambda g: (-g[1], g[0]))
    )
    return TableSize(table.name, rows, total, statuses)


def history_size(engine: Engine) -> HistorySize:
    """Rows and bytes of each history table of *engine*, and per status.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be read (unchanged).
    """
    with engine.connect() as conn:
        tables = [_table(conn, t) for t in (workflow_history, workflow_step_history)]
        if conn.dialect.name == "sqlite" and has_context_table(conn):
            count = conn.execute(sa.text(f"SELECT count(*) FROM {CONTEXT_TABLE}")).scalar_one()
            size = _table_bytes(conn, CONTEXT_TABLE)
            tables.append(TableSize(CONTEXT_TABLE, int(count), size, ()))
    return HistorySize(display_url(engine.url), tuple(tables))
