"""Opening the history database: URL resolution, engine settings per dialect, safe display.

The URL comes from the caller, else ``FLOWTEL_DATABASE_URL``, else the SQLite file
``flowtel.db`` in the working directory. SQLite runs in WAL mode with a busy timeout, so
readers never block the writer and several writer processes wait instead of failing. A
database file flowtel creates is private to the user (0600, whatever the umask; SQLite gives its
``-wal`` and ``-shm`` files the same mode) and so is every directory it creates for it (0700).
:func:`make_read_engine` is for commands that only read: it never creates, writes or switches
the journal mode of what it opens (SQLite ``mode=ro``; read-only sessions on the servers).
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
    "make_read_engine",
    "resolve_database_url",
]

DEFAULT_DATABASE_URL = "sqlite:///flowtel.db"
"""Used when neither an argument nor ``FLOWTEL_DATABASE_URL`` names a database."""

SQLITE_BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10
"""Seconds a PostgreSQL or MariaDB connection attempt may take (unless the URL says)."""
IO_TIMEOUT_S = 60.0
"""Seconds one statement, or one read or write on the connection, may take (unless the URL
says): PyMySQL's ``read_timeout``/``write_timeout``; PostgreSQL's ``statement_timeout`` (on the
server) and ``tcp_user_timeout`` (unacknowledged data) with TCP keepalives."""
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


def _sqlite_read_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA query_only=ON")
    finally:
        cursor.close()


def _mysql_read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
    finally:
        cursor.close()


def _sqlite_read_only_url(url: URL) -> URL:
    """*url* as a ``file:`` URI opened with ``mode=ro``: never created, never written."""
    database = url.database or ""
    query = dict(url.query)
    if database.startswith("file:") and query.get("uri") == "true":
        return url.set(query={**query, "mode": "ro"})
    if not database or database == ":memory:":
        return url  # a private in-memory database: nothing to protect
    uri = Path(database).absolute().as_uri()  # percent-encodes '?', '#', spaces
    return url.set(database=uri, query={**query, "uri": "true", "mode": "ro"})


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


def _create(url: URL, options: dict[str, Any]) -> Engine:
    try:
        return create_engine(url, **options)
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


def _base_options(url: URL, io_timeout: float | None = IO_TIMEOUT_S) -> dict[str, Any]:
    options: dict[str, Any] = {"pool_pre_ping": True}
    backend = url.get_backend_name()
    if backend in _JSON_BACKENDS:
        mysql = backend in ("mysql", "mariadb")
        options["json_serializer"] = partial(dumps_json, max_depth=31) if mysql else dumps_json
    if backend in ("sqlite", "mysql", "mariadb"):
        # rows imported from the old system may hold metadata that is not JSON: read it as text
        options["json_deserializer"] = _lenient_json_loads
    if backend == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
        options.pop("pool_pre_ping")
    else:
        options["connect_args"] = _server_timeouts(url, io_timeout)
    return options


def _server_timeouts(url: URL, io_timeout: float | None) -> dict[str, Any]:
    """Connect and read bounds for a server database; what the URL sets wins."""
    given = url.query
    args: dict[str, Any] = {}
    # a host that drops packets, or a server that accepts and stays silent, must not block a
    # writer or a shutdown until the TCP timeout, or forever
    if "connect_timeout" not in given:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    if io_timeout is None:
        return args
    backend = url.get_backend_name()
    if backend in ("mysql", "mariadb"):
        for name in ("read_timeout", "write_timeout"):
            if name not in given:
                args[name] = max(int(io_timeout), 1)
    elif backend == "postgresql":
        millis = max(int(io_timeout * 1000), 1)
        defaults = {
            "tcp_user_timeout": millis,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        args.update({k: v for k, v in defaults.items() if k not in given})
        if "options" not in given:
            args["options"] = f"-c statement_timeout={millis}"
    return args


def make_engine(
    database_url: str | URL | None = None,
    *,
    io_timeout: float | None = IO_TIMEOUT_S,
    **engine_options: Any,
) -> Engine:
    """Create a SQLAlchemy engine for the history database with flowtel's settings.

    Every wait is bounded: the connect (:data:`CONNECT_TIMEOUT_S`), each statement and each
    read or write on a server connection (*io_timeout* seconds, :data:`IO_TIMEOUT_S`; ``None``
    for none, e.g. for a long migration) and a SQLite lock (:data:`SQLITE_BUSY_TIMEOUT_S`).
    Settings in the URL's query (``read_timeout``, ``options``, ...) win.

    Raises:
        DatabaseURLError: the URL cannot be parsed or its driver is not installed (the
            message names the extra to install).
        DatabaseFileError: a SQLite file or its directory cannot be created (no permission,
            a read-only file system); the message names the path.
    """
    url = resolve_database_url(database_url)
    options = _base_options(url, io_timeout)
    if url.get_backend_name() == "sqlite":
        _prepare_sqlite_file(url)
    options.update(engine_options)
    engine = _create(url, options)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_read_engine(database_url: str | URL | None = None, **engine_options: Any) -> Engine:
    """Create an engine that can only read the database: for commands that only look.

    Nothing is created or changed: a SQLite file is opened as a ``file:`` URI with
    ``mode=ro`` (a missing file fails to connect instead of being created) and ``query_only``,
    without the WAL switch :func:`make_engine` makes; PostgreSQL sessions start with
    ``default_transaction_read_only=on`` and MariaDB/MySQL sessions run ``SET SESSION
    TRANSACTION READ ONLY``, so any write fails on the server.

    Raises:
        DatabaseURLError: the URL cannot be parsed or its driver is not installed.
    """
    url = resolve_database_url(database_url)
    options = _base_options(url)
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = dict(options.get("connect_args", {}))
    if backend == "sqlite":
        url = _sqlite_read_only_url(url)
    elif backend == "postgresql":
        given = str(url.query.get("options", connect_args.get("options", "")))
        connect_args["options"] = f"{given} -c default_transaction_read_only=on".strip()
        url = url.difference_update_query(["options"])
    options["connect_args"] = connect_args
    options.update(engine_options)
    engine = _create(url, options)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_read_pragmas)
    elif backend in ("mysql", "mariadb"):
        event.listen(engine, "connect", _mysql_read_only)
    return engine
