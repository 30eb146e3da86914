"""Quarter-day and weekly rollups, and failed step attempts counted per error type in them.

Revision ID: 0008
Revises: 0007

Stats sum fewer cells when the rollups also count each run and step attempt in its UTC quarter
day (6 h: a 7-day window's partial days) and week (a 90-day window), and they read a window's
failures per error type from the rollups instead of the failed rows: ``workflow_step_rollup``
gains ``error_type`` in its key (a primary key cannot change in place, so the table is made
again) and every rollup is refilled from the stored rows with the new triggers, in the
upgrade's transaction while writers wait (about two minutes per 250,000 runs on SQLite). A
database whose rollups already have the column — revision 0007 run by this release in the
same upgrade — is left as it is. MariaDB and MySQL get the new table shape only. See
:mod:`exporters.db.rollups`.

Downgrading drops the rollups and their triggers: stats read the base tables (right, slower)
until ``flowtel db upgrade`` builds them again. Nothing stored in the history is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from exporters.db import rollups
from exporters.db.migrations import NOTES_KEY
from exporters.db.schema import workflow_duration_bucket, workflow_rollup, workflow_step_rollup

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = (workflow_duration_bucket, workflow_rollup, workflow_step_rollup)


def _current(bind: sa.Connection) -> bool:
    inspector = sa.inspect(bind)
    if not inspector.has_table(rollups.STEP_ROLLUP):
        return False
    columns = {c["name"] for c in inspector.get_columns(rollups.STEP_ROLLUP)}
    return rollups.ERROR_TYPE_COLUMN in columns


def upgrade() -> None:
    """Make the step rollup again with its error type, then the triggers, then refill."""
    bind = op.get_bind()
    if _current(bind):
        return
    rollups.uninstall(bind)
    workflow_step_rollup.drop(bind, checkfirst=True)
    for table in _TABLES:
        table.create(bind, checkfirst=True)
    rollups.install(bind)
    config = op.get_context().config
    if config is not None and bind.dialect.name in rollups.ROLLUP_DIALECTS:
        runs = rollups.runs_counted(bind)
        config.attributes.setdefault(NOTES_KEY, []).append(
            f"stats rollups rebuilt with quarter days, weeks and error types from {runs} runs"
        )


def downgrade() -> None:
    """Drop the triggers and the rollup tables: revision 0007's stats read the base tables."""
    bind = op.get_bind()
    rollups.uninstall(bind)
    for table in reversed(_TABLES):
        table.drop(bind, checkfirst=True)
