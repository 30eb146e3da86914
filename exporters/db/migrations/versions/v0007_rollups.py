"""Per-hour rollups of runs and step attempts, kept by triggers, for fast stats and trends.

Revision ID: 0007
Revises: 0006

Creates ``workflow_duration_bucket``, ``workflow_rollup`` and ``workflow_step_rollup`` on every
database; on SQLite and PostgreSQL it also creates the triggers that keep them and fills them
from the stored rows (one ``INSERT ... SELECT ... GROUP BY`` per rollup, in the upgrade's
transaction, while writers wait). MariaDB and MySQL get the tables only: their stats keep
reading the base tables. See :mod:`exporters.db.rollups`. Each table is created only if
missing and the triggers are dropped and made again, so the revision can be run again.
"""

from __future__ import annotations

from alembic import op

from exporters.db import rollups
from exporters.db.migrations import NOTES_KEY
from exporters.db.schema import workflow_duration_bucket, workflow_rollup, workflow_step_rollup

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_TABLES = (workflow_duration_bucket, workflow_rollup, workflow_step_rollup)


def upgrade() -> None:
    """Create the rollup tables, their triggers, and fill them from the stored rows."""
    bind = op.get_bind()
    for table in _TABLES:
        table.create(bind, checkfirst=True)
    rollups.install(bind)
    config = op.get_context().config
    if config is not None and bind.dialect.name in rollups.ROLLUP_DIALECTS:
        runs = rollups.runs_counted(bind)
        config.attributes.setdefault(NOTES_KEY, []).append(
            f"stats rollups built from {runs} runs: flowtel stats and trends read them"
        )


def downgrade() -> None:
    """Drop the triggers and the rollup tables (nothing stored in the history is lost)."""
    bind = op.get_bind()
    rollups.uninstall(bind)
    for table in reversed(_TABLES):
        table.drop(bind, checkfirst=True)
