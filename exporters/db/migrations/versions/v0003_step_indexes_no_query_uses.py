"""Step indexes only where a query uses them: fewer bytes per run, the same rows.

Revision ID: 0003
Revises: 0002

Every step index entry repeats its key for each of a run's ~23 step rows. Two of 0002's step
indexes serve no query of ``exporters/query``, ``exporters/serve`` or ``docs/sql.md``:
``ix_workflow_step_history_run_id`` ``(run_id, step_index)``, whose lookups by ``run_id`` the
unique ``(run_id, span_id)`` key's index serves as well (a run's few steps are sorted after),
and, except on PostgreSQL (whose ``flowtel stats`` bounds the steps it joins by their own start
time), ``ix_workflow_step_history_started_at``. On PostgreSQL the ``(status, started_at)``
index becomes partial: ``WHERE status <> 'completed'`` (the failed, retrying and skipped steps
that ``flowtel stats`` and the recipes look up by status; the completed ones of a window are
read through ``started_at``), a twentieth of its size. This revision drops and rebuilds those
indexes where they exist and changes no row. Each index is looked up first, so a revision
interrupted on MariaDB (which commits every DDL statement) can be run again. The downgrade
creates the indexes of 0002 again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from exporters.db.migrations import NOTES_KEY

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TABLE = "workflow_step_history"
STATUS_INDEX = ("ix_workflow_step_history_status_started_at", ("status", "started_at"))
PARTIAL = "status <> 'completed'"
RUN_ID_INDEX = ("ix_workflow_step_history_run_id", ("run_id", "step_index"))
STARTED_AT_INDEX = ("ix_workflow_step_history_started_at", ("started_at",))


def _dropped(dialect: str) -> list[tuple[str, tuple[str, ...]]]:
    """The indexes this revision drops on *dialect*."""
    return [RUN_ID_INDEX] if dialect == "postgresql" else [RUN_ID_INDEX, STARTED_AT_INDEX]


def _existing() -> set[str]:
    return {str(index["name"]) for index in sa.inspect(op.get_bind()).get_indexes(TABLE)}


def _status_index_partial(bind: sa.Connection) -> bool | None:
    """Whether PostgreSQL's status index is partial (``None``: there is none)."""
    definition = bind.execute(
        sa.text(
            "SELECT indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = :t AND indexname = :i"
        ),
        {"t": TABLE, "i": STATUS_INDEX[0]},
    ).scalar()
    return None if definition is None else " WHERE " in str(definition)


def upgrade() -> None:
    """Drop :func:`_dropped`'s indexes that exist; make PostgreSQL's status index partial."""
    bind = op.get_bind()
    existing = _existing()
    gone = [name for name, _ in _dropped(bind.dialect.name) if name in existing]
    for name in gone:
        op.drop_index(name, table_name=TABLE)
    notes = [f"dropped {', '.join(gone)}: no query uses them"] if gone else []
    if bind.dialect.name == "postgresql" and not _status_index_partial(bind):
        if STATUS_INDEX[0] in existing:
            op.drop_index(STATUS_INDEX[0], table_name=TABLE)
        op.create_index(
            STATUS_INDEX[0], TABLE, list(STATUS_INDEX[1]), postgresql_where=sa.text(PARTIAL)
        )
        notes.append(f"{STATUS_INDEX[0]} now holds only the steps WHERE {PARTIAL}")
    config = op.get_context().config
    if config is not None and notes:
        config.attributes.setdefault(NOTES_KEY, []).extend(f"{n} (rows unchanged)" for n in notes)


def downgrade() -> None:
    """Create the dropped indexes again (no row changes either way)."""
    bind = op.get_bind()
    existing = _existing()
    for name, columns in _dropped(bind.dialect.name):
        if name not in existing:
            op.create_index(name, TABLE, list(columns))
    if bind.dialect.name == "postgresql" and _status_index_partial(bind) is not False:
        if STATUS_INDEX[0] in existing:
            op.drop_index(STATUS_INDEX[0], table_name=TABLE)
        op.create_index(STATUS_INDEX[0], TABLE, list(STATUS_INDEX[1]))
