"""Compare a live database with ``exporters/db/schema.py`` and refuse tables flowtel cannot use.

:func:`check_schema` inspects both history tables once and reports every missing table, missing,
extra or mistyped column, wrong nullability and missing index in one :class:`SchemaReport`.
Types are compared by what flowtel stores, not by spelling: a legacy ``TEXT`` column holds a
``VARCHAR(255)`` value, SQLite keeps timestamps and JSON as text, but a PostgreSQL ``timestamp``
without time zone, a MariaDB ``TIMESTAMP`` or a too-short ``VARCHAR`` are differences.
Differences that would make writes fail are *blocking*. :func:`prepare_schema`, which the
writer and ``configure()`` call once at start, creates the schema on an empty database under
a lock of the database's own (so processes starting together never see each other's half-made
schema as a mismatch) and raises :class:`SchemaMismatchError` naming ``flowtel db upgrade`` on
a blocking difference.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from exporters.db.engine import display_url
from exporters.db.migrations.compat import ddl, type_holds
from exporters.db.schema import POSTGRESQL_ONLY_INDEXES, ROLLUP_TABLES, metadata
from exporters.errors import SchemaMismatchError

__all__ = [
    "SchemaDifference",
    "SchemaMismatchError",
    "SchemaReport",
    "check_schema",
    "prepare_schema",
]


@dataclasses.dataclass(frozen=True, slots=True)
class SchemaDifference:
    """One way the live schema differs from the expected one.

    Attributes:
        table: the table concerned.
        kind: ``missing_table``, ``missing_column``, ``extra_column``, ``mistyped_column``,
            ``not_null`` (live NOT NULL where flowtel writes NULL), ``missing_index`` or
            ``missing_unique``.
        name: the column or index name (the table's for ``missing_table``).
        expected: what flowtel expects, as DDL text.
        actual: what the database has, as DDL text.
        blocking: whether flowtel's writes would fail because of it.
    """

    table: str
    kind: str
    name: str
    expected: str | None = None
    actual: str | None = None
    blocking: bool = True

    def __str__(self) -> str:
        where = self.table if self.kind == "missing_table" else f"{self.table}.{self.name}"
        text = f"{where}: {self.kind.replace('_', ' ')}"
        if self.expected is not None:
            text += f" (expected {self.expected}"
            text += f", found {self.actual})" if self.actual is not None else ")"
        elif self.actual is not None:
            text += f" ({self.actual})"
        return text


@dataclasses.dataclass(frozen=True, slots=True)
class SchemaReport:
    """The result of :func:`check_schema`.

    Attributes:
        database: the URL, password masked.
        revision: the recorded migration revision (``None``: never migrated).
        head: the newest revision this flowtel ships.
        differences: every difference found, tables in schema order.
        notes: remarks that are not differences (a foreign key flowtel's rows must satisfy).
    """

    database: str
    revision: str | None
    head: str
    differences: tuple[SchemaDifference, ...]
    notes: tuple[str, ...] = ()

    @property
    def matches(self) -> bool:
        """Whether the live schema has no difference at all."""
        return not self.differences

    @property
    def blocking(self) -> tuple[SchemaDifference, ...]:
        """The differences that would make flowtel's writes fail."""
        return tuple(d for d in self.differences if d.blocking)

    @property
    def only_tables_missing(self) -> bool:
        """Whether every blocking difference is a missing table: nothing flowtel cannot fix.

        An empty database, or one whose tables another process is creating right now; the
        writer's :func:`prepare_schema` creates what is missing.
        """
        return all(d.kind == "missing_table" for d in self.blocking)

    @property
    def empty(self) -> bool:
        """Whether neither history table exists."""
        missing = {d.table for d in self.differences if d.kind == "missing_table"}
        return missing == set(metadata.tables)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-ready dictionary."""
        return {
            "database": self.database,
            "revision": self.revision,
            "head": self.head,
            "matches": self.matches,
            "differences": [dataclasses.asdict(d) for d in self.differences],
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """A human-readable report, one difference per line."""
        state = "matches" if self.matches else f"{len(self.differences)} differences"
        lines = [f"{self.database} (revision {self.revision or 'none'}, head {self.head}): {state}"]
        lines += [f"  - {d}{'' if d.blocking else '  [not blocking]'}" for d in self.differences]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _column_differences(
    table: sa.Table, live: list[Any], dialect: sa.Dialect
) -> list[SchemaDifference]:
    found = {column["name"]: column for column in live}
    out: list[SchemaDifference] = []
    for column in table.columns:
        expected = f"{ddl(column.type, dialect)}{'' if column.nullable else ' NOT NULL'}"
        here = found.get(column.name)
        if here is None:
            optional = table.name in ROLLUP_TABLES  # older rollups: stats read the base tables
            out.append(
                SchemaDifference(
                    table.name, "missing_column", column.name, expected, blocking=not optional
                )
            )
            continue
        actual = ddl(here["type"], dialect)
        if not type_holds(column.type, here["type"], dialect.name):
            out.append(
                SchemaDifference(table.name, "mistyped_column", column.name, expected, actual)
            )
        if column.nullable and not here["nullable"] and not column.primary_key:
            out.append(
                SchemaDifference(
                    table.name, "not_null", column.name, "NULL allowed", f"{actual} NOT NULL"
                )
            )
    for name, here in found.items():
        if name not in table.columns:
            required = not here["nullable"] and here.get("default") is None
            out.append(
                SchemaDifference(
                    table.name,
                    "extra_column",
                    name,
                    actual=f"{ddl(here['type'], dialect)}{' NOT NULL' if required else ''}",
                    blocking=required and not here.get("autoincrement", False),
                )
            )
    return out


def _index_differences(table: sa.Table, inspector: Any) -> list[SchemaDifference]:
    indexes = inspector.get_indexes(table.name)
    uniques = [tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)]
    uniques += [tuple(i["column_names"]) for i in indexes if i["unique"]]
    covered = {tuple(i["column_names"]) for i in indexes} | set(uniques)
    out: list[SchemaDifference] = []
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            columns = tuple(c.name for c in constraint.columns)
            if columns not in uniques:
                shown = f"UNIQUE ({', '.join(columns)})"
                out.append(SchemaDifference(table.name, "missing_unique", columns[0], shown))
    for index in sorted(table.indexes, key=lambda i: str(i.name)):
        columns = tuple(c.name for c in index.columns)
        if index.name in POSTGRESQL_ONLY_INDEXES and inspector.dialect.name != "postgresql":
            continue
        if columns not in covered:
            shown = f"INDEX ({', '.join(columns)})"
            out.append(
                SchemaDifference(
                    table.name, "missing_index", str(index.name), shown, blocking=False
                )
            )
    return out


def _foreign_key_notes(table: sa.Table, inspector: Any) -> list[str]:
    notes = []
    for fk in inspector.get_foreign_keys(table.name):
        columns = ", ".join(fk["constrained_columns"])
        notes.append(
            f"{table.name}({columns}) references {fk['referred_table']}: runs flowtel records "
            f"must name an existing {columns} or none, or their batch fails to write"
        )
    return notes


def _check(connection: Connection) -> SchemaReport:
    from exporters.db.migrations import HEAD_REVISION, VERSION_TABLE

    inspector = sa.inspect(connection)
    present = set(inspector.get_table_names())
    differences: list[SchemaDifference] = []
    notes: list[str] = []
    for table in metadata.tables.values():
        if table.name not in present:
            optional = table.name in ROLLUP_TABLES  # stats read the base tables without them
            differences.append(
                SchemaDifference(table.name, "missing_table", table.name, blocking=not optional)
            )
            continue
        live = inspector.get_columns(table.name)
        differences += _column_differences(table, live, connection.dialect)
        differences += _index_differences(table, inspector)
        notes += _foreign_key_notes(table, inspector)
    revision = None
    if VERSION_TABLE in present:
        query = sa.text(f"SELECT version_num FROM {VERSION_TABLE}")
        revision = connection.execute(query).scalar()
    return SchemaReport(
        database=display_url(connection.engine.url),
        revision=revision,
        head=HEAD_REVISION,
        differences=tuple(differences),
        notes=tuple(notes),
    )


def check_schema(engine: Engine | Connection) -> SchemaReport:
    """Compare the live history tables with ``exporters/db/schema.py``.

    Args:
        engine: the history database, or an open connection to it.

    Returns:
        Every difference, with the recorded and the newest revision.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached (unchanged).
    """
    if isinstance(engine, Connection):
        return _check(engine)
    with engine.connect() as connection:
        return _check(connection)


_LOCK_NAME = "flowtel_schema"  # MariaDB/MySQL named lock taken while the schema is created
_LOCK_KEY = 0x666C6F7774656C  # PostgreSQL advisory lock key ("flowtel")
_LOCK_WAIT_S = 60  # the most a start waits for another process creating the schema


@contextlib.contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the database's schema-creation lock, in a transaction.

    One process at a time creates the tables; the others wait here, then find them complete.
    SQLite: ``BEGIN IMMEDIATE`` (the database's write lock, waited for in the busy handler; the
    tables appear to readers all at once at commit). PostgreSQL: a transaction-scoped advisory
    lock (its DDL is transactional too). MariaDB/MySQL commit each ``CREATE TABLE`` on its own,
    so a named ``GET_LOCK`` serialises the creators and readers treat missing tables as a
    schema in progress.
    """
    backend = engine.dialect.name
    with engine.connect() as connection:
        if backend == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif backend == "postgresql":
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        elif backend in ("mysql", "mariadb"):
            got = connection.execute(
                sa.text("SELECT GET_LOCK(:name, :wait)"), {"name": _LOCK_NAME, "wait": _LOCK_WAIT_S}
            ).scalar()
            if got != 1:
                raise TimeoutError(
                    f"another process has held the schema lock {_LOCK_NAME!r} of "
                    f"{display_url(engine.url)} for over {_LOCK_WAIT_S} s"
                )
        try:
            yield connection
            connection.commit()
        finally:
            if backend in ("mysql", "mariadb"):
                connection.rollback()
                connection.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _LOCK_NAME})
                connection.commit()


def _create_missing(connection: Connection, report: SchemaReport) -> None:
    """Create the tables *report* finds missing; an empty database is stamped at head."""
    from exporters.db.migrations import stamp

    metadata.create_all(connection, checkfirst=True)
    if report.empty:
        stamp(connection)


def prepare_schema(engine: Engine) -> SchemaReport:
    """Make sure flowtel can write history to *engine*; call once at start, never per row.

    On an empty database it creates both tables at the newest revision (and records it); on
    a usable one it changes nothing. Safe when several processes start at once: the tables are
    created under the database's schema lock (:func:`_schema_lock`), so one process creates
    them and the others wait, then find them complete; a table missing beside the other (one
    dropped by hand) is created the same way.

    Args:
        engine: the history database.

    Returns:
        The schema report (possibly with differences that do not block writes).

    Raises:
        SchemaMismatchError: the tables exist but writes would fail; the message lists the
            differences and names ``flowtel db upgrade --db <URL>`` (password masked).
        sqlalchemy.exc.OperationalError: the database cannot be reached (unchanged).
    """
    report = check_schema(engine)
    if report.blocking:  # look again under the lock: another process may be creating them
        try:
            with _schema_lock(engine) as connection:
                report = check_schema(connection)  # as the lock holder before us left it
                if report.blocking and report.only_tables_missing:
                    _create_missing(connection, report)
        except SQLAlchemyError:
            if check_schema(engine).blocking:  # else another creator (no lock) finished it
                raise
        report = check_schema(engine)
    if report.blocking:
        raise SchemaMismatchError(report)
    return report
