"""A read-only engine on the history database for ``flowtel serve``.

The web view never writes, and the database makes sure of it: a SQLite file is opened through a
``file:...?mode=ro`` URI (never created, never switched to WAL, never written; a missing file is
an error, not an empty database), a PostgreSQL session starts with
``default_transaction_read_only=on`` and a MariaDB/MySQL session with ``SET SESSION TRANSACTION
READ ONLY``. A read-only database role (docs/serve.md) adds the server's own guarantee.
JSON that is not JSON (rows imported from the old system) reads back as text, as with
:func:`exporters.db.engine.make_engine`.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import NoSuchModuleError

from exporters.db.engine import (
    CONNECT_TIMEOUT_S,
    SQLITE_BUSY_TIMEOUT_S,
    DatabaseURLError,
    display_url,
    resolve_database_url,
)

__all__ = ["readonly_engine", "sqlite_readonly_uri"]


def _lenient_json_loads(text: str | bytes) -> Any:
    """``json.loads``, but text that is not JSON comes back as the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def sqlite_readonly_uri(url: URL) -> URL:
    """*url* (``sqlite:///path``) as ``sqlite:///file:/abs/path?mode=ro&uri=true``."""
    database = url.database or ""
    if database.startswith("file:"):
        path, _, query = database[len("file:") :].partition("?")
        params = dict(urllib.parse.parse_qsl(query))
    else:
        path, params = str(Path(database).resolve()), {}
    params["mode"] = "ro"
    quoted = urllib.parse.quote(path, safe="/")
    return url.set(
        database=f"file:{quoted}?{urllib.parse.urlencode(params)}", query={"uri": "true"}
    )


def _mysql_read_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET SESSION TRANSACTION READ ONLY")
    finally:
        cursor.close()


def _sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA query_only=ON")
    finally:
        cursor.close()


def readonly_engine(database_url: str | URL | None = None) -> Engine:
    """An engine that can only read the history database at *database_url*.

    The URL is resolved as everywhere else (argument, ``FLOWTEL_DATABASE_URL``,
    ``sqlite:///flowtel.db``).

    Raises:
        DatabaseURLError: the URL cannot be parsed, is an in-memory SQLite database, or its
            driver is not installed.
    """
    url = resolve_database_url(database_url)
    backend = url.get_backend_name()
    options: dict[str, Any] = {"pool_pre_ping": True, "json_deserializer": _lenient_json_loads}
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseURLError("flowtel serve needs a SQLite file, not an in-memory database")
        url = sqlite_readonly_uri(url)
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        options.pop("pool_pre_ping")
    elif backend == "postgresql":
        options["connect_args"] = {
            "options": "-c default_transaction_read_only=on",
            **({} if "connect_timeout" in url.query else {"connect_timeout": CONNECT_TIMEOUT_S}),
        }
    elif "connect_timeout" not in url.query:
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(url, **options)
    except (NoSuchModuleError, ModuleNotFoundError):
        raise DatabaseURLError(
            f"cannot open {display_url(url)}: unknown dialect or driver not installed "
            "(pip install 'flowtel[postgres]' or 'flowtel[mysql]')"
        ) from None
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_reader)
    elif backend in ("mysql", "mariadb"):
        event.listen(engine, "connect", _mysql_read_only)
    return engine
