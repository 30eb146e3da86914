"""Step rows keyed by ``(run_id, span_id)`` instead of ``span_id`` alone.

Revision ID: 0002
Revises: 0001

Span ids are unique only within a trace: an application's provider that draws them from a
seeded ``random`` repeats them in every run, and the unique ``span_id`` made all but the first
run's steps vanish. This revision replaces ``UNIQUE (span_id)`` with ``UNIQUE (run_id,
span_id)`` named ``uq_workflow_step_history_run_span``; stored rows are unchanged (they were
unique by ``span_id``, so they are unique by the pair). SQLite rebuilds the table in Alembic's
batch mode from the frozen definition below; PostgreSQL and MariaDB drop and add the constraint.
Each step checks what is there first, so a revision interrupted on MariaDB (which commits every
DDL statement) can be run again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from exporters.db.migrations import NOTES_KEY
from exporters.db.migrations.versions.v0001_history_tables import (
    step_table as step_table_0001,
)

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "workflow_step_history"
KEY = ("run_id", "span_id")
CONSTRAINT = "uq_workflow_step_history_run_span"


def step_table(meta: sa.MetaData) -> sa.Table:
    """``workflow_step_history`` as of this revision: 0001's, re-keyed."""
    old = step_table_0001(sa.MetaData())
    columns: list[Any] = []
    for column in old.columns:
        copy = column._copy()
        copy.unique = None
        columns.append(copy)
    indexes = [sa.Index(i.name, *(c.name for c in i.columns)) for i in old.indexes]
    return sa.Table(TABLE, meta, *columns, *indexes, sa.UniqueConstraint(*KEY, name=CONSTRAINT))


def _uniques(bind: Any) -> dict[tuple[str, ...], str | None]:
    inspector = sa.inspect(bind)
    found = {tuple(u["column_names"]): u["name"] for u in inspector.get_unique_constraints(TABLE)}
    for index in inspector.get_indexes(TABLE):
        if index["unique"]:
            found.setdefault(tuple(index["column_names"]), index["name"])
    return found


def upgrade() -> None:
    """Replace ``UNIQUE (span_id)`` with ``UNIQUE (run_id, span_id)``."""
    bind = op.get_bind()
    uniques = _uniques(bind)
    old, new = ("span_id",) in uniques, KEY in uniques
    if not old and new:
        return
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(TABLE, recreate="always", copy_from=step_table(sa.MetaData())):
            pass
    else:
        if not new:
            op.create_unique_constraint(CONSTRAINT, TABLE, list(KEY))
        if old:
            op.drop_constraint(str(uniques[("span_id",)]), TABLE, type_="unique")
    config = op.get_context().config
    if config is not None:
        config.attributes.setdefault(NOTES_KEY, []).append(
            f"{TABLE} is keyed by (run_id, span_id): steps of different runs may share a span id"
        )


def downgrade() -> None:
    """Refuse: rows of different runs may now share a span id."""
    raise NotImplementedError(
        "flowtel does not downgrade its history tables; restore a backup instead "
        "(SQLite upgrades leave <file>.bak-<timestamp> beside the database)"
    )
