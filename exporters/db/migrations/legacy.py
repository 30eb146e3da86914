"""Revision 0001's in-place upgrade of an existing ``workflow_history`` (frozen with it).

The old provisioning system's table has the first eleven columns of flowtel's. Adopting it adds
flowtel's columns, gives every old row a unique ``run_id`` (``legacy-<id>``) and marks it
imported (``service_name = 'legacy-import'``), fills ``workflow_name``, ``current_step`` and
``duration_ms`` where the old ``metadata`` and timestamps say them, and relaxes ``server_id NOT
NULL`` because flowtel records runs that have no server. No stored value changes: only columns
that were NULL because they did not exist are written. Types change only where flowtel could not
otherwise read or write them: PostgreSQL ``timestamp`` becomes ``timestamptz`` (read in the
session's time zone) and ``text`` metadata ``jsonb``; MariaDB timestamps become ``DATETIME(6)``
and text metadata ``LONGTEXT`` (bytes kept). SQLite keeps its declared types and is rebuilt in
Alembic's batch mode, keeping the foreign key, ``AUTOINCREMENT`` and its counter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from alembic.operations import Operations
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from exporters.db.migrations.backfill import LEGACY_RUN_ID_PREFIX, LEGACY_SERVICE_NAME, backfill

__all__ = [
    "LEGACY_RUN_ID_PREFIX",
    "LEGACY_SERVICE_NAME",
    "adopt_history_table",
    "create_missing_indexes",
]

_CORE = ("id", "workflow_id", "status")
_ZERO_DEFAULT = ("steps_completed", "total_steps", "seq")
_SHOWN = 10
_UNIQUE_RUN_ID = "uq_workflow_history_run_id"


def adopt_history_table(op: Operations, runs: sa.Table) -> list[str]:
    """Bring the existing ``workflow_history`` to *runs*' shape; return notes for the user.

    Args:
        op: the running migration's operations.
        runs: ``workflow_history`` as revision 0001 defines it.

    Raises:
        RuntimeError: the table lacks ``id``, ``workflow_id`` or ``status`` (it is not the
            old system's), or PostgreSQL metadata that is not JSON blocks the conversion.
    """
    bind = op.get_bind()
    live = _columns(bind, runs.name)
    missing = [name for name in _CORE if name not in live]
    if missing:
        raise RuntimeError(
            f"table {runs.name} exists but has no {', '.join(missing)} column: it is neither "
            "flowtel's nor the old workflow history table; rename it and run the upgrade again"
        )
    added = [column.name for column in runs.columns if column.name not in live]
    for name in added:
        column = runs.c[name]
        if name in _ZERO_DEFAULT:
            zero = sa.text("0")
            column = sa.Column(name, column.type, nullable=False, server_default=zero)
            op.add_column(runs.name, column)
        else:
            op.add_column(runs.name, sa.Column(name, column.type, nullable=True))
    imported, not_json = backfill(bind, runs.name, live)
    live = _columns(bind, runs.name)
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite(op, bind, runs, live, added)
    else:
        _alter_server(op, bind, runs, live, added, not_json)
    notes = [f"added columns to {runs.name}: {', '.join(added)}"] if added else []
    if imported:
        notes.append(
            f"imported {imported} existing rows unchanged, as run_id '{LEGACY_RUN_ID_PREFIX}<id>' "
            f"with service_name '{LEGACY_SERVICE_NAME}'"
        )
    return notes + _foreign_key_notes(bind, runs.name)


def create_missing_indexes(bind: Connection, tables: Iterable[sa.Table]) -> None:
    """Create each index of *tables* unless one with its name or its columns exists.

    Args:
        bind: the migration's connection.
        tables: the tables as the revision defines them.
    """
    inspector = sa.inspect(bind)
    for table in tables:
        present = inspector.get_indexes(table.name)
        names = {index["name"] for index in present}
        columns = {tuple(index["column_names"]) for index in present}
        for index in table.indexes:
            wanted = tuple(column.name for column in index.columns)
            if index.name not in names and wanted not in columns:
                index.create(bind)


def _columns(bind: Connection, table: str) -> dict[str, Any]:
    return {column["name"]: column for column in sa.inspect(bind).get_columns(table)}


def _has_unique(bind: Connection, table: str, column: str) -> bool:
    inspector = sa.inspect(bind)
    uniques: list[list[Any]] = [u["column_names"] for u in inspector.get_unique_constraints(table)]
    uniques += [list(i["column_names"]) for i in inspector.get_indexes(table) if i["unique"]]
    return [column] in uniques


def _nullability(column: sa.Column[Any], found: Mapping[str, Any]) -> bool | None:
    """The nullability *column* needs if the live one differs in a way that matters."""
    if column.primary_key:
        return None
    if column.nullable and not found["nullable"]:
        return True  # flowtel writes NULL here (server_id of a run without a server)
    if column.name == "run_id" and found["nullable"]:
        return False
    return None


def _rebuild_sqlite(
    op: Operations, bind: Connection, runs: sa.Table, live: Mapping[str, Any], added: list[str]
) -> None:
    sql = bind.execute(
        sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": runs.name},
    ).scalar_one()
    autoincrement = "AUTOINCREMENT" in str(sql).upper()
    counter = _sqlite_counter(bind, runs.name) if autoincrement else None
    with op.batch_alter_table(
        runs.name, recreate="auto", table_kwargs={"sqlite_autoincrement": autoincrement}
    ) as batch:
        for column in runs.columns:
            found = live[column.name]
            changes: dict[str, Any] = {}
            nullable = _nullability(column, found)
            if nullable is not None:
                changes["nullable"] = nullable
            if column.name in added and column.name in _ZERO_DEFAULT:
                changes["server_default"] = None
            if changes:
                batch.alter_column(column.name, existing_type=found["type"], **changes)
        if not _has_unique(bind, runs.name, "run_id"):
            batch.create_unique_constraint(_UNIQUE_RUN_ID, ["run_id"])
    if counter is not None:
        bind.execute(
            sa.text("UPDATE sqlite_sequence SET seq = :seq WHERE name = :name AND seq < :seq"),
            {"seq": counter, "name": runs.name},
        )


def _sqlite_counter(bind: Connection, table: str) -> int | None:
    if not sa.inspect(bind).has_table("sqlite_sequence"):
        return None
    query = sa.text("SELECT seq FROM sqlite_sequence WHERE name = :name")
    value = bind.execute(query, {"name": table}).scalar()
    return None if value is None else int(value)


def _new_type(dialect: str, column: sa.Column[Any], found: Any) -> Any:
    """The type *found* must become for flowtel to read and write it, else ``None``."""
    if column.name in ("started_at", "completed_at", "updated_at"):
        if dialect == "postgresql" and not getattr(found, "timezone", False):
            return sa.DateTime(timezone=True)
        if dialect != "postgresql" and (
            not isinstance(found, mysql.DATETIME) or (found.fsp or 0) < 6
        ):
            return mysql.DATETIME(fsp=6)
    if column.name == "metadata":
        if dialect == "postgresql" and not isinstance(found, JSONB):
            return JSONB()
        if dialect != "postgresql" and not isinstance(
            found, (sa.JSON, mysql.LONGTEXT, mysql.MEDIUMTEXT)
        ):
            charset = getattr(found, "charset", None)
            return mysql.LONGTEXT(charset=charset, collation=getattr(found, "collation", None))
    return None


def _alter_server(
    op: Operations,
    bind: Connection,
    runs: sa.Table,
    live: Mapping[str, Any],
    added: list[str],
    not_json: list[int],
) -> None:
    dialect = bind.dialect.name
    for column in runs.columns:
        found = live[column.name]
        new_type = _new_type(dialect, column, found["type"])
        nullable = _nullability(column, found)
        drop_default = column.name in added and column.name in _ZERO_DEFAULT
        if new_type is None and nullable is None and not drop_default:
            continue
        options: dict[str, Any] = {"existing_type": found["type"]}
        if new_type is not None:
            options["type_"] = new_type
        if dialect == "postgresql" and isinstance(new_type, JSONB):
            if not_json:
                shown = ", ".join(str(i) for i in not_json[:_SHOWN])
                raise RuntimeError(
                    f"cannot convert {runs.name}.metadata to JSONB: {len(not_json)} rows hold "
                    f"text that is not JSON (id {shown}); fix those rows and run the upgrade again"
                )
            options["postgresql_using"] = "metadata::jsonb"
        default = found.get("default")
        if drop_default:
            options["server_default"] = None
        elif default is not None:
            if isinstance(new_type, mysql.DATETIME) and "current_timestamp" in default.lower():
                default = "CURRENT_TIMESTAMP(6)"
            options["existing_server_default"] = sa.text(default)
        options["existing_nullable"] = found["nullable"]
        if nullable is not None:
            options["nullable"] = nullable
        op.alter_column(runs.name, column.name, **options)
    if not _has_unique(bind, runs.name, "run_id"):
        op.create_unique_constraint(_UNIQUE_RUN_ID, runs.name, ["run_id"])


def _foreign_key_notes(bind: Connection, table: str) -> list[str]:
    notes = []
    for fk in sa.inspect(bind).get_foreign_keys(table):
        columns = ", ".join(fk["constrained_columns"])
        referred = f"{fk['referred_table']}({', '.join(fk['referred_columns'])})"
        notes.append(
            f"kept foreign key {table}({columns}) -> {referred}: a run flowtel records must "
            f"name a {columns} that exists in {fk['referred_table']}, or none"
        )
    if bind.dialect.name == "sqlite" and notes:
        orphans = bind.execute(sa.text(f"PRAGMA foreign_key_check({table})")).all()
        if orphans:
            notes.append(
                f"{len(orphans)} existing rows name a server missing from the referred table "
                "(the old system never enforced the foreign key); they were left unchanged"
            )
    return notes
