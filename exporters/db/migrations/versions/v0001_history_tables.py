"""The history tables: create them, or adopt the old system's ``workflow_history`` in place.

Revision ID: 0001
Revises: (none)

On a database without ``workflow_history`` this creates both tables with their unique
constraints and indexes exactly as flowtel 0.1 defines them. When the table exists it is either
the old provisioning system's (no ``run_id``) or one flowtel created before it shipped
migrations; :func:`exporters.db.migrations.legacy.adopt_history_table` adds whatever is missing
without changing a stored value. The step table and any missing index follow. The table
definitions below are frozen copies of ``exporters/db/schema.py`` at this revision: later schema
changes belong in later revisions, never here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.operations import Operations
from sqlalchemy.dialects.mysql import DATETIME as MYSQL_DATETIME
from sqlalchemy.dialects.postgresql import JSONB

from exporters.db.migrations import NOTES_KEY, legacy

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _timestamp() -> Any:
    return (
        sa.DateTime()
        .with_variant(sa.DateTime(timezone=True), "postgresql")
        .with_variant(MYSQL_DATETIME(fsp=6), "mysql", "mariadb")
    )


def _json() -> Any:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def run_table(meta: sa.MetaData) -> sa.Table:
    """``workflow_history`` as of this revision."""
    return sa.Table(
        "workflow_history",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workflow_id", sa.String(255), nullable=False),
        sa.Column("server_id", sa.String(255), nullable=True),
        sa.Column("device_type", sa.String(255), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", _timestamp()),
        sa.Column("completed_at", _timestamp()),
        sa.Column("steps_completed", sa.Integer, nullable=False),
        sa.Column("total_steps", sa.Integer, nullable=False),
        sa.Column("error_message", sa.Text),
        sa.Column("metadata", _json()),
        sa.Column("run_id", sa.String(64), nullable=False, unique=True),
        sa.Column("workflow_name", sa.String(255)),
        sa.Column("current_step", sa.String(255)),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("error_type", sa.String(255)),
        sa.Column("trace_id", sa.String(32)),
        sa.Column("span_id", sa.String(16)),
        sa.Column("parent_run_id", sa.String(64)),
        sa.Column("service_name", sa.String(255)),
        sa.Column("host", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("updated_at", _timestamp()),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Index("ix_workflow_history_status_started_at", "status", "started_at"),
        sa.Index("ix_workflow_history_started_at", "started_at"),
        sa.Index("ix_workflow_history_workflow_id", "workflow_id"),
        sa.Index("ix_workflow_history_server_id", "server_id"),
        sa.Index("ix_workflow_history_trace_id", "trace_id"),
    )


def step_table(meta: sa.MetaData) -> sa.Table:
    """``workflow_step_history`` as of this revision."""
    return sa.Table(
        "workflow_step_history",
        meta,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False, unique=True),
        sa.Column("step_index", sa.Integer, nullable=False),
        sa.Column("step_name", sa.String(255), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("started_at", _timestamp()),
        sa.Column("completed_at", _timestamp()),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("message", sa.Text),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text),
        sa.Column("error_stacktrace", sa.Text),
        sa.Column("logs", _json()),
        sa.Index("ix_workflow_step_history_run_id", "run_id", "step_index"),
        sa.Index("ix_workflow_step_history_status_started_at", "status", "started_at"),
        sa.Index("ix_workflow_step_history_started_at", "started_at"),
    )


def upgrade() -> None:
    """Create the tables, or bring an existing ``workflow_history`` up to this revision."""
    bind = op.get_bind()
    meta = sa.MetaData()
    runs, steps = run_table(meta), step_table(meta)
    config = op.get_context().config
    notes: list[str] = config.attributes.setdefault(NOTES_KEY, []) if config else []
    inspector = sa.inspect(bind)
    if inspector.has_table(runs.name):
        notes.extend(legacy.adopt_history_table(Operations(op.get_context()), runs))
    else:
        runs.create(bind)
    if not sa.inspect(bind).has_table(steps.name):
        steps.create(bind)
    legacy.create_missing_indexes(bind, (runs, steps))


def downgrade() -> None:
    """Refuse: dropping history (or un-adopting the old table) would lose data."""
    raise NotImplementedError(
        "flowtel does not downgrade its history tables; restore a backup instead "
        "(SQLite upgrades leave <file>.bak-<timestamp> beside the database)"
    )
