"""Opening the history database: URL resolution, engine settings per dialect, safe display.

The URL comes from the caller, else ``FLOWTEL_DATABASE_URL``, else the SQLite file
``flowtel.db`` in the working directory. SQLite runs in WAL mode with a busy timeout, so
readers never block the writer and several writer processes wait instead of failing. A
database file flowtel creates is private to the user (0600, whatever the umask; SQLite gives its
``-wal`` and ``-shm`` files the same mode) and so is every directory it creates for it (0700).
JSON columns are written by :func:`~exporters.db.json.dumps_json` (safe for every backend and
bounded). URLs are only ever shown with the password masked, also in the errors raised here.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from exporters.db.json import dumps_json
from exporters.errors import DatabaseFileError, DatabaseURLError

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
CONNECT_TIMEOUT_S = 10
"""Seconds a PostgreSQL or MariaDB connection attempt may take (unless the URL says)."""
_JSON_BACKENDS = frozenset({"sqlite", "postgresql", "mysql", "mariadb"})


def resolve_database_url(database_url: str | URL | None = None) -> URL:
    """Return the URL to use: *database_url*, ``FLOWTEL_DATABASE_URL`` or the default."""
    raw = database_url or os.environ.get("FLOWTEL_DATABASE_URL") or DEFAULT_DATABASE_URL
    try:
        return make_url(raw)
    except (ArgumentError, ValueError):
        shown = raw if isinstance(raw, URL) else "<unparseable URL>"
        raise DatabaseURLError(
            f"cannot parse database URL {shown!s}: expected e.g. sqlite:///flowtel.db, "
            "postgresql+psycopg://user:pw@host/db or mysql+pymysql://user:pw@host/db"
        ) from None


def display_url(url: str | URL) -> str:
    """Return *url* as text with its password masked (safe for logs and errors)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"


def _private_directories(directory: Path) -> None:
    """Create *directory* and its missing parents 0700; existing ones are left as they are."""
    missing: list[Path] = []
    current = directory
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # created meanwhile by someone else: not ours to change
        os.chmod(path, 0o700)  # the umask may have removed bits; never added any


def _prepare_sqlite_file(url: URL) -> None:
    """Create the SQLite file 0600 (and its directories 0700) unless it exists."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    try:
        _private_directories(path.parent)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # the user's file: its mode is theirs
    except OSError as exc:  # not writable, a file in the way, a read-only file system
        raise DatabaseFileError(database, exc) from exc
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
    finally:
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


def _lenient_json_loads(text: str | bytes) -> Any:
    """``json.loads``, but text that is not JSON comes back as the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def make_engine(database_url: str | URL | None = None, **engine_options: Any) -> Engine:
    """Create a SQLAlchemy engine for the history database with flowtel's settings.

    Raises:
        DatabaseURLError: the URL cannot be parsed or its driver is not installed (the
            message names the extra to install).
        DatabaseFileError: a SQLite file or its directory cannot be created (no permission,
            a read-only file system); the message names the path.
    """
    url = resolve_database_url(database_url)
    options: dict[str, Any] = {"pool_pre_ping": True}
    backend = url.get_backend_name()
    if backend in _JSON_BACKENDS:
        mysql = backend in ("mysql", "mariadb")
        options["json_serializer"] = partial(dumps_json, max_depth=31) if mysql else dumps_json
    if backend in ("sqlite", "mysql", "mariadb"):
        # rows imported from the old system may hold metadata that is not JSON: read it as text
        options["json_deserializer"] = _lenient_json_loads
    if backend != "sqlite" and "connect_timeout" not in url.query:
        # a host that drops packets must not block configure() until the TCP timeout
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if backend == "sqlite":
        _prepare_sqlite_file(url)
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        options.pop("pool_pre_ping")
    options.update(engine_options)
    try:
        engine = create_engine(url, **options)
    except NoSuchModuleError:
        raise DatabaseURLError(
            f"unknown database dialect or driver in {display_url(url)}: expected e.g. "
            "sqlite:///flowtel.db, postgresql+psycopg://... or mysql+pymysql://..."
        ) from None
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
