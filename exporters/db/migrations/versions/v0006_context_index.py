"""The index of run contexts behind ``flowtel runs --where KEY=VALUE``.

Revision ID: 0006
Revises: 0005

PostgreSQL gets a GIN index (``jsonb_path_ops``) on ``(metadata -> 'context_data')``; SQLite
gets the key/value table ``workflow_context`` with the triggers that keep it, filled from every
stored run in the same transaction; MariaDB and MySQL get nothing (they read the context with
``JSON_EXTRACT``). See :mod:`exporters.db.context_index`. Creating the index reads every run
once — per million runs about 30 s on PostgreSQL and 2.5 min on SQLite (measured by
``benchmarks/bench_where.py`` on a loaded machine) — while writers wait (the upgrade's
transaction).
Every statement checks what is there first, so the revision can be run again.
"""

from __future__ import annotations

from alembic import op

from exporters.db import context_index
from exporters.db.migrations import NOTES_KEY

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the context index of this database and fill it."""
    bind = op.get_bind()
    context_index.install(bind)
    config = op.get_context().config
    if config is not None and bind.dialect.name in ("sqlite", "postgresql"):
        config.attributes.setdefault(NOTES_KEY, []).append(
            "run contexts are indexed: flowtel runs --where KEY=VALUE reads the index"
        )


def downgrade() -> None:
    """Drop the context index (nothing stored is lost: the contexts stay in ``metadata``)."""
    context_index.uninstall(op.get_bind())
