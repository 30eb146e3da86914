"""The index behind ``--where KEY=VALUE``: every run's context keys, searchable per database.

A run's context lives in ``workflow_history.metadata`` under ``context_data``, with arbitrary
keys, so no ordinary column index can serve it. PostgreSQL indexes the context itself: a GIN
index with ``jsonb_path_ops`` on ``(metadata -> 'context_data')``, used by ``@>`` containment.
SQLite cannot index arbitrary JSON keys, so it keeps ``workflow_context`` (``key``, ``value`` as
text, ``run`` = ``workflow_history.id``; primary key ``(key, value, run)``, without rowid),
maintained by triggers on ``workflow_history`` from ``json_each`` — the writers are unchanged.
A run's context is indexed when its row is inserted, and again when an update changes its
status or finds it not indexed yet (a row first written without a context); the snapshots in
between, one per step, cost one primary-key probe each, not a JSON parse — flowtel never changes
a run's context while it runs, and a query always checks the row's own JSON, so an entry can
never make a run match that does not. Metadata that is not valid JSON is skipped, never an
error for the writer. MariaDB has neither a JSON index for arbitrary keys nor a
way to fill a key/value table from a trigger that its older releases share, so it reads the
context with ``JSON_EXTRACT`` (a scan). :func:`install` creates the objects of one database
(migration ``0006`` and :func:`exporters.db.schema.create_schema` both call it).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

__all__ = [
    "CONTEXT_TABLE",
    "POSTGRES_INDEX",
    "SQLITE_TEXT_VALUE",
    "drop",
    "has_context_table",
    "install",
    "uninstall",
]

CONTEXT_TABLE = "workflow_context"
"""SQLite's key/value table of run contexts."""
POSTGRES_INDEX = "ix_workflow_history_context"
"""PostgreSQL's GIN index on the run's context."""

SQLITE_TEXT_VALUE = (
    "CASE type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' WHEN 'null' THEN NULL "
    "ELSE CAST(value AS TEXT) END"
)
"""A ``json_each`` row's value as the text ``--where`` compares (``true``, ``3``, ``a``)."""

_CONTEXT_OF = (
    "json_each(CASE WHEN json_valid({row}.metadata) THEN {row}.metadata END, '$.context_data')"
)
_FILL = (
    f"INSERT OR IGNORE INTO {CONTEXT_TABLE} (key, value, run) "
    f"SELECT key, {SQLITE_TEXT_VALUE}, {{row}}.id FROM {_CONTEXT_OF} "
    f"WHERE key IS NOT NULL AND {SQLITE_TEXT_VALUE} IS NOT NULL"
)

_SQLITE_DDL: tuple[str, ...] = (
    f"DROP TABLE IF EXISTS {CONTEXT_TABLE}",
    f"CREATE TABLE {CONTEXT_TABLE} (key TEXT NOT NULL, value TEXT NOT NULL, "
    "run INTEGER NOT NULL, PRIMARY KEY (key, value, run)) WITHOUT ROWID",
    f"CREATE INDEX ix_{CONTEXT_TABLE}_run ON {CONTEXT_TABLE} (run)",
    "CREATE TRIGGER IF NOT EXISTS workflow_context_insert AFTER INSERT ON workflow_history "
    f"BEGIN {_FILL.format(row='NEW')}; END",
    "CREATE TRIGGER IF NOT EXISTS workflow_context_update AFTER UPDATE OF metadata "
    "ON workflow_history WHEN NEW.status IS NOT OLD.status "
    f"OR NOT EXISTS (SELECT 1 FROM {CONTEXT_TABLE} WHERE run = NEW.id) "
    f"BEGIN DELETE FROM {CONTEXT_TABLE} WHERE run = OLD.id; {_FILL.format(row='NEW')}; END",
    "CREATE TRIGGER IF NOT EXISTS workflow_context_delete AFTER DELETE ON workflow_history "
    f"BEGIN DELETE FROM {CONTEXT_TABLE} WHERE run = OLD.id; END",
    _FILL.format(row="workflow_history").replace(
        "FROM json_each", "FROM workflow_history, json_each", 1
    ),
)
_TRIGGERS = ("workflow_context_insert", "workflow_context_update", "workflow_context_delete")
_POSTGRES_DDL: tuple[str, ...] = (
    f"CREATE INDEX IF NOT EXISTS {POSTGRES_INDEX} ON workflow_history "
    "USING gin ((metadata -> 'context_data') jsonb_path_ops)",
)


def install(connection: Connection) -> None:
    """Create the context index of *connection*'s database and fill it from the stored runs.

    SQLite: (re)creates ``workflow_context`` and its triggers, then indexes every stored run;
    PostgreSQL: creates the GIN index if missing; MariaDB/MySQL: nothing. Runs inside the
    caller's transaction.
    """
    name = connection.dialect.name
    statements = _SQLITE_DDL if name == "sqlite" else _POSTGRES_DDL if name == "postgresql" else ()
    for statement in statements:
        connection.execute(text(statement))


def drop(connection: Connection) -> None:
    """Drop SQLite's ``workflow_context`` (its triggers go with ``workflow_history``)."""
    if connection.dialect.name == "sqlite":
        connection.execute(text(f"DROP TABLE IF EXISTS {CONTEXT_TABLE}"))


def uninstall(connection: Connection) -> None:
    """Remove the context index while ``workflow_history`` stays (revision 0006's downgrade):
    SQLite's triggers and ``workflow_context``, PostgreSQL's GIN index."""
    name = connection.dialect.name
    if name == "sqlite":
        for trigger in _TRIGGERS:
            connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
        connection.execute(text(f"DROP TABLE IF EXISTS {CONTEXT_TABLE}"))
    elif name == "postgresql":
        connection.execute(text(f"DROP INDEX IF EXISTS {POSTGRES_INDEX}"))


def has_context_table(connection: Connection) -> bool:
    """Whether *connection*'s SQLite database has ``workflow_context`` (revision 0006)."""
    found = connection.execute(
        text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": CONTEXT_TABLE},
    )
    return found.first() is not None
