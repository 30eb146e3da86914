"""Step rows keep what a step was given and what it returned, where the step opts in.

Revision ID: 0005
Revises: 0003

Adds ``input`` and ``output`` (JSON; JSONB on PostgreSQL) to ``workflow_step_history``, both
nullable: stored rows keep ``NULL`` (nothing was recorded), and a step records them only when
it asks (``@step(record_io=True)``, ``step.set_input``/``set_output``). Each column is added only
if it is missing, so a revision interrupted on MariaDB (which commits every DDL statement) can
be run again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from exporters.db.migrations import NOTES_KEY

revision: str = "0005"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "workflow_step_history"
COLUMNS = ("input", "output")


def _json() -> Any:
    return sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    """Add the ``input`` and ``output`` columns where they are missing."""
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    added = [name for name in COLUMNS if name not in present]
    for name in added:
        op.add_column(TABLE, sa.Column(name, _json(), nullable=True))
    config = op.get_context().config
    if added and config is not None:
        config.attributes.setdefault(NOTES_KEY, []).append(
            f"{TABLE} has {' and '.join(added)}: steps that opt in record what they were "
            "given and returned"
        )


def downgrade() -> None:
    """Drop the two columns (what steps recorded in them is lost)."""
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(TABLE)}
    with op.batch_alter_table(TABLE) as batch:
        for name in COLUMNS:
            if name in present:
                batch.drop_column(name)
