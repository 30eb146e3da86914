"""The history schema: ``workflow_history`` (one row per run) and ``workflow_step_history``.

``workflow_history`` is a superset of the table the old provisioning system wrote by hand, so
its queries keep working; flowtel adds the unique ``run_id``, trace ids, progress, host/pid
heartbeat columns and ``seq``, the per-run sequence number that makes upserts monotonic.
``workflow_step_history`` holds one row per step attempt, keyed by its run and the attempt's
span id (span ids are unique only within a trace, and repeat across runs whose provider draws
them from a seeded ``random``).
Timestamps are timezone-aware UTC on every database; JSON is JSONB on PostgreSQL.
Indexes exist only where a query of ``exporters/query`` or ``exporters/serve`` (or a recipe
of ``docs/sql.md``) uses them: every index entry repeats its key in each run's 23 step rows
(revision 0003 dropped those no query used, ``docs/benchmarks.md`` has the bytes per run).
Creating ``workflow_history`` also creates the index of run contexts
(:mod:`exporters.db.context_index`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from exporters.db import context_index, rollups
from exporters.db.timestamps import sqlite_text

__all__ = [
    "POSTGRESQL_ONLY_INDEXES",
    "ROLLUP_TABLES",
    "RUN_COLUMNS",
    "STEP_COLUMNS",
    "STEP_KEY",
    "STEP_KEY_CONSTRAINT",
    "STEP_STATUS_INDEX_WHERE",
    "UTCDateTime",
    "create_schema",
    "metadata",
    "workflow_duration_bucket",
    "workflow_history",
    "workflow_rollup",
    "workflow_step_history",
    "workflow_step_rollup",
]


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite and MariaDB store naive UTC values (microsecond
    precision) that are tagged UTC again on the way out. Naive values read from rows written
    by other tools are taken as UTC.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(DateTime(timezone=True))
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return _sqlite_text  # the writer's hot path: skip SQLAlchemy's generic formatting
        if dialect.name == "postgresql":
            return _postgresql_value  # the same for timestamptz
        return super().bind_processor(dialect)

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # rows written as text by other tools (old SQLite table)
            value = dt.datetime.fromisoformat(value)
        stamp: dt.datetime = value
        if stamp.tzinfo is None:
            return stamp.replace(tzinfo=dt.UTC)
        return stamp.astimezone(dt.UTC)


def _sqlite_text(value: dt.datetime | None) -> str | None:
    """UTC text in SQLAlchemy's SQLite format: ``YYYY-MM-DD HH:MM:SS.ffffff`` (naive values are
    UTC already; see :func:`exporters.db.timestamps.sqlite_text`)."""
    if value is None:
        return None
    if value.tzinfo is not dt.UTC:
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return sqlite_text(value)


def _postgresql_value(value: dt.datetime | None) -> dt.datetime | None:
    """The aware UTC datetime psycopg sends as ``timestamptz`` (the writer's values are UTC
    already and pass as they are; naive values are taken as UTC)."""
    if value is None or value.tzinfo is dt.UTC:
        return value
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _json() -> Any:
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


STEP_KEY: tuple[str, ...] = ("run_id", "span_id")
"""The columns that identify a step row (its upsert's conflict target)."""
STEP_KEY_CONSTRAINT = "uq_workflow_step_history_run_span"
"""The name of the unique constraint on :data:`STEP_KEY` (revision 0002)."""

STEP_STATUS_INDEX_WHERE = "status <> 'completed'"
"""PostgreSQL's ``ix_workflow_step_history_status_started_at`` holds only these rows (a
query's ``status = 'failed'`` implies it); SQLite cannot prove that, MariaDB has no partial
indexes: there it holds every row."""

metadata = MetaData()

workflow_history = Table(
    "workflow_history",
    metadata,
    # --- the old system's columns ---
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("workflow_id", String(255), nullable=False),
    Column("server_id", String(255), nullable=True),
    Column("device_type", String(255), nullable=True),
    Column("status", String(32), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("completed_at", UTCDateTime()),
    Column("steps_completed", Integer, nullable=False, default=0),
    Column("total_steps", Integer, nullable=False, default=0),
    Column("error_message", Text),
    Column("metadata", _json()),
    # --- flowtel's columns ---
    Column("run_id", String(64), nullable=False, unique=True),
    Column("workflow_name", String(255)),
    Column("current_step", String(255)),
    Column("duration_ms", BigInteger),
    Column("error_type", String(255)),
    Column("trace_id", String(32)),
    Column("span_id", String(16)),
    Column("parent_run_id", String(64)),
    Column("service_name", String(255)),
    Column("host", String(255)),
    Column("pid", Integer),
    Column("updated_at", UTCDateTime()),
    Column("seq", BigInteger, nullable=False, default=0),
    Index("ix_workflow_history_status_started_at", "status", "started_at"),
    Index("ix_workflow_history_started_at", "started_at"),
    Index("ix_workflow_history_workflow_id", "workflow_id"),
    Index("ix_workflow_history_server_id", "server_id"),
    Index("ix_workflow_history_trace_id", "trace_id"),
)

workflow_step_history = Table(
    "workflow_step_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("span_id", String(16), nullable=False),
    Column("step_index", Integer, nullable=False),
    Column("step_name", String(255), nullable=False),
    Column("attempt", Integer, nullable=False, default=1),
    Column("status", String(32), nullable=False),
    Column("started_at", UTCDateTime()),
    Column("completed_at", UTCDateTime()),
    Column("duration_ms", BigInteger),
    Column("message", Text),
    Column("error_type", String(255)),
    Column("error_message", Text),
    Column("error_stacktrace", Text),
    Column("logs", _json()),
    Column("input", _json()),  # revision 0005: what the step was given (opt-in)
    Column("output", _json()),  # revision 0005: what the step returned (opt-in)
    Index(
        "ix_workflow_step_history_status_started_at",
        "status",
        "started_at",
        postgresql_where=text(STEP_STATUS_INDEX_WHERE),
    ),
    Index("ix_workflow_step_history_started_at", "started_at").ddl_if(dialect="postgresql"),
    UniqueConstraint("run_id", "span_id", name=STEP_KEY_CONSTRAINT),
)
"""A run's steps are found through the unique ``(run_id, span_id)`` key's index (its leading
column), so they need no index of their own. On PostgreSQL the ``(status, started_at)`` index
is partial (:data:`STEP_STATUS_INDEX_WHERE`): it serves the failed, retrying and skipped steps
(``flowtel stats``' errors, the recipes), while the steps' ``started_at`` index, which exists on
PostgreSQL only (:data:`POSTGRESQL_ONLY_INDEXES`), serves the time windows ``flowtel stats``
bounds its join with and the completed steps of a window."""

POSTGRESQL_ONLY_INDEXES = frozenset({"ix_workflow_step_history_started_at"})
"""Indexes created on PostgreSQL only: no query on SQLite or MariaDB/MySQL uses them."""


def _context_index_created(target: Table, connection: Connection, **_: Any) -> None:
    context_index.install(connection)


def _context_index_dropped(target: Table, connection: Connection, **_: Any) -> None:
    context_index.drop(connection)


event.listen(workflow_history, "after_create", _context_index_created)
event.listen(workflow_history, "after_drop", _context_index_dropped)

workflow_duration_bucket = Table(
    rollups.BUCKETS_TABLE,
    metadata,
    Column("lower_ms", BigInteger, primary_key=True, autoincrement=False),
    Column("bucket", Integer, nullable=False),
    sqlite_with_rowid=False,
)
"""The duration buckets of the rollups (revision 0007): each one's lower bound in ms."""

workflow_rollup = Table(
    rollups.RUN_ROLLUP,
    metadata,
    Column("span_s", Integer, primary_key=True, autoincrement=False),
    Column("period", BigInteger, primary_key=True, autoincrement=False),
    Column("workflow_name", String(255), primary_key=True),
    Column("status", String(32), primary_key=True),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("runs", BigInteger, nullable=False),
    Column("max_ms", BigInteger),
    sqlite_with_rowid=False,  # stored in key order: a window is one range of the table
)
"""Runs per hour, quarter day, day and week of their start (``span_s`` 3600, 21600, 86400 or
604800; ``period``: periods since the epoch), workflow, status and duration bucket (revision
0007; quarter days and weeks from 0008), kept by triggers on SQLite and PostgreSQL
(:mod:`exporters.db.rollups`)."""

workflow_step_rollup = Table(
    rollups.STEP_ROLLUP,
    metadata,
    Column("span_s", Integer, primary_key=True, autoincrement=False),
    Column("period", BigInteger, primary_key=True, autoincrement=False),
    Column("workflow_name", String(255), primary_key=True),
    Column("step_index", Integer, primary_key=True, autoincrement=False),
    Column("step_name", String(255), primary_key=True),
    Column("status", String(32), primary_key=True),
    # revision 0008; shorter on MariaDB/MySQL (no trigger writes it there), whose keys are
    # at most 3,072 bytes
    Column(
        "error_type",
        String(255).with_variant(String(128), "mysql", "mariadb"),
        primary_key=True,
    ),
    Column("bucket", Integer, primary_key=True, autoincrement=False),
    Column("attempts", BigInteger, nullable=False),
    Column("max_ms", BigInteger),
    sqlite_with_rowid=False,
)
"""Step attempts per hour, quarter day, day and week of their run's start, workflow, step,
status, error type (failed attempts only, ``''`` otherwise) and duration bucket (revision 0007;
quarter days, weeks and error types from 0008), kept by triggers on SQLite and PostgreSQL."""

ROLLUP_TABLES = frozenset({rollups.BUCKETS_TABLE, rollups.RUN_ROLLUP, rollups.STEP_ROLLUP})
"""The rollup tables: their absence, or a column missing from them (a database still at
0007), blocks no write; stats read the base tables then."""


def _rollups_created(target: MetaData, connection: Connection, **kw: Any) -> None:
    created = {table.name for table in kw.get("tables", ())}
    if rollups.STEP_ROLLUP in created:
        rollups.install(connection)


event.listen(metadata, "after_create", _rollups_created)

RUN_COLUMNS: tuple[str, ...] = tuple(c.name for c in workflow_history.columns if c.name != "id")
"""Columns a run snapshot writes (all but the surrogate ``id``)."""
STEP_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in workflow_step_history.columns if c.name != "id"
)
"""Columns a step snapshot writes (all but the surrogate ``id``)."""


def create_schema(engine: Engine) -> None:
    """Create both tables and their indexes if they do not exist yet."""
    metadata.create_all(engine, checkfirst=True)
