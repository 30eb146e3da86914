"""flowtel's Alembic migrations, shipped inside the package and configured in code (no ini file).

:func:`upgrade` brings a history database to the newest revision: on an empty database it
creates both tables, and on a database holding the old provisioning system's
``workflow_history`` it upgrades that table in place without changing a stored value (revision
``0001``, see :mod:`exporters.db.migrations.legacy`). Before it changes an existing SQLite file it
copies the file to ``<file>.bak-<UTC timestamp>`` (mode 0600). The upgrade runs in one
transaction under a lock, so two processes upgrading at once take turns; PostgreSQL and SQLite
roll back completely on failure, MariaDB commits each DDL statement and the revision is written
to be re-run safely. The revision lives in ``flowtel_schema_version``, not Alembic's default
``alembic_version``, so a database whose own application uses Alembic is left undisturbed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from exporters.db.engine import SQLITE_BUSY_TIMEOUT_S, display_url

if TYPE_CHECKING:  # Alembic is imported when first used: it costs a few hundred ms
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

__all__ = [
    "HEAD_REVISION",
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "UpgradeResult",
    "alembic_config",
    "backup_sqlite",
    "current_revision",
    "script_directory",
    "stamp",
    "upgrade",
]

SCRIPT_LOCATION = Path(__file__).resolve().parent
"""The Alembic environment (``env.py``, ``versions/``) inside the installed package."""
VERSION_TABLE = "flowtel_schema_version"
"""The table holding the database's revision."""
HEAD_REVISION = "0008"
"""The newest revision (a test checks it against ``versions/``; update both together)."""
NOTES_KEY = "flowtel.notes"
"""``Config.attributes`` key of the list revisions append human-readable notes to."""

_LOCK_NAME = "flowtel_schema_upgrade"
_PG_LOCK_KEY = 0x666C6F77  # "flow"
_LOCK_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True, slots=True)
class UpgradeResult:
    """What :func:`upgrade` did.

    Attributes:
        database: the database's URL, password masked.
        from_revision: the revision before (``None``: never migrated).
        to_revision: the revision after.
        backup: the SQLite backup copy made first, if any.
        notes: what the revisions reported (rows imported, foreign-key orphans ...).
    """

    database: str
    from_revision: str | None
    to_revision: str | None
    backup: Path | None
    notes: tuple[str, ...]

    @property
    def changed(self) -> bool:
        """Whether the revision moved."""
        return self.from_revision != self.to_revision


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for flowtel's migrations (no ini file needed).

    Use it with ``alembic.command``: ``command.revision(cfg, autogenerate=True, message=...)``
    with a connection to a database at head writes a new revision into ``versions/``.

    Args:
        connection: the connection ``env.py`` runs the revisions on (inside its transaction).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    config.attributes[NOTES_KEY] = []
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    """The revisions shipped with this flowtel (loaded once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def _context(connection: Connection) -> MigrationContext:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})


def current_revision(connectable: Engine | Connection) -> str | None:
    """The database's revision, or ``None`` when flowtel never migrated it.

    Args:
        connectable: an engine (a connection is opened and closed) or an open connection.
    """
    if isinstance(connectable, Engine):
        with connectable.connect() as connection:
            return current_revision(connection)
    return _context(connectable).get_current_revision()


def stamp(connection: Connection, revision: str = "head") -> None:
    """Record *revision* as the database's revision, replacing whatever was recorded.

    Args:
        connection: a connection inside the caller's transaction.
        revision: the revision to record (default: the newest).
    """
    context = _context(connection)
    if inspect(connection).has_table(VERSION_TABLE):
        connection.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    context.stamp(script_directory(), revision)


def backup_sqlite(database: str, now: dt.datetime | None = None) -> Path:
    """Copy the SQLite file *database* to ``<file>.bak-<UTC timestamp>`` (mode 0600).

    Uses SQLite's online backup, so pages still in the write-ahead log are included.

    Args:
        database: the path of the SQLite file.
        now: the time in the copy's name (default: now, UTC).

    Returns:
        The path of the copy.
    """
    stamp_text = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    target = Path(f"{database}.bak-{stamp_text}")
    os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    source = sqlite3.connect(database)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
    os.chmod(target, 0o600)
    return target


def _sqlite_file(engine: Engine) -> str | None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or not Path(database).exists():
        return None
    return database


def _sqlite_migration_engine(engine: Engine) -> Engine:
    """A private engine whose transactions really are SQLite transactions (``BEGIN IMMEDIATE``).

    Foreign keys are off while the table is rebuilt: the old system never enforced them, so
    its rows may name servers that no longer exist, and copying them must not fail.
    """
    migration = create_engine(
        engine.url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
    )

    @event.listens_for(migration, "connect")
    def _connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=OFF")

    @event.listens_for(migration, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return migration


@contextmanager
def _locked_transaction(engine: Engine) -> Iterator[Connection]:
    dialect = engine.dialect.name
    target = _sqlite_migration_engine(engine) if dialect == "sqlite" else engine
    try:
        with target.begin() as connection:
            if dialect == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})"))
            elif dialect in ("mysql", "mariadb"):
                connection.execute(text(f"SELECT GET_LOCK('{_LOCK_NAME}', {_LOCK_TIMEOUT_S})"))
            try:
                yield connection
            finally:
                if dialect in ("mysql", "mariadb"):
                    connection.execute(text(f"SELECT RELEASE_LOCK('{_LOCK_NAME}')"))
    finally:
        if target is not engine:
            target.dispose()


def upgrade(engine: Engine, revision: str = "head", *, backup: bool = True) -> UpgradeResult:
    """Migrate the database behind *engine* to *revision* (default: the newest).

    Args:
        engine: the history database.
        revision: the target revision.
        backup: copy an existing SQLite file before changing it.

    Returns:
        What changed, the backup's path and the revisions' notes.

    Raises:
        sqlalchemy.exc.OperationalError: the database cannot be reached.
        RuntimeError: ``workflow_history`` exists but is neither flowtel's nor the old
            system's table (nothing is changed).
    """
    before = current_revision(engine)
    target = script_directory().get_revision(revision)
    wanted = target.revision if target is not None else None
    copy = None
    database = _sqlite_file(engine)
    if backup and database is not None and before != wanted:
        with engine.connect() as connection:
            has_tables = bool(inspect(connection).get_table_names())
        if has_tables:
            copy = backup_sqlite(database)
    from alembic import command

    notes: list[str] = []
    with _locked_transaction(engine) as connection:
        config = alembic_config(connection)
        config.attributes[NOTES_KEY] = notes
        command.upgrade(config, revision)
    return UpgradeResult(
        database=display_url(engine.url),
        from_revision=before,
        to_revision=current_revision(engine),
        backup=copy,
        notes=tuple(notes),
    )
