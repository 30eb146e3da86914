"""Opening the history database: URL resolution, engine settings per dialect, safe display.

The URL comes from the caller, else ``FLOWTEL_DATABASE_URL``, else the SQLite file
``flowtel.db`` in the working directory. SQLite runs in WAL mode with a busy timeout, so
readers never block the writer and several writer processes wait instead of failing; the file
is created private to the user (0600). URLs are only ever shown with the password masked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DatabaseURLError",
    "display_url",
    "make_engine",
    "resolve_database_url",
]

DEFAULT_DATABASE_URL = "sqlite:///flowtel.db"
"""Used when neither an argument nor ``FLOWTEL_DATABASE_URL`` names a database."""

SQLITE_BUSY_TIMEOUT_S = 30.0


class DatabaseURLError(ValueError):
    """The database URL cannot be parsed or names a driver that is not installed."""


def resolve_database_url(database_url: str | URL | None = None) -> URL:
    """Return the URL to use: *database_url*, ``FLOWTEL_DATABASE_URL`` or the default."""
    raw = database_url or os.environ.get("FLOWTEL_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        return make_url(raw)
    except ArgumentError as exc:
        shown = raw if isinstance(raw, URL) else "<unparseable URL>"
        raise DatabaseURLError(
            f"cannot parse database URL {shown!s}: expected e.g. sqlite:///flowtel.db, "
            "postgresql+psycopg://user:pw@host/db or mysql+pymysql://user:pw@host/db"
        ) from None


def display_url(url: str | URL) -> str:
    """Return *url* as text with its password masked (safe for logs and errors)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _prepare_sqlite_file(url: URL) -> None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_engine(database_url: str | URL | None = None, **engine_options: Any) -> Engine:
    """Create a SQLAlchemy engine for the history database with flowtel's settings.

    Raises:
        DatabaseURLError: the URL cannot be parsed or its driver is not installed (the
            message names the extra to install).
    """
    url = resolve_database_url(database_url)
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        options.pop("pool_pre_ping")
    options.update(engine_options)
    try:
        engine = create_engine(url, **options)
    except ModuleNotFoundError as exc:
        extra = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}.get(
            url.get_backend_name(), ""
        )
        hint = f"; install it with: pip install 'flowtel[{extra}]'" if extra else ""
        raise DatabaseURLError(
            f"the driver for {display_url(url)} is not installed ({exc.name}){hint}"
        ) from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine
