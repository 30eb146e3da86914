"""The Alembic environment: runs flowtel's revisions on the connection the caller passed in.

Alembic executes this file for every command. flowtel never builds an engine here: the
connection comes from :func:`exporters.db.migrations.upgrade` (or any caller that puts one in
``Config.attributes["connection"]``), already inside a transaction, so the caller decides about
transactions and locks. The revision table is ``flowtel_schema_version``; autogenerate compares
only flowtel's two tables. Offline (``--sql``) mode is not supported: revision ``0001`` inspects
the live database to decide what to do.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from exporters.db.migrations import VERSION_TABLE
from exporters.db.schema import metadata

__all__: list[str] = []


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Let autogenerate see flowtel's tables only, never the application's own."""
    return type_ != "table" or name in metadata.tables


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if context.is_offline_mode() or connection is None:
        raise RuntimeError(
            "flowtel's migrations run on a live connection: use `flowtel db upgrade --db URL` "
            "or exporters.db.migrations.upgrade(engine)"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        include_name=_include_name,
        compare_type=True,
        transactional_ddl=connection.dialect.name != "mysql",
    )
    with context.begin_transaction():
        context.run_migrations()


_run()
