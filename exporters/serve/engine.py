"""The read-only engine ``flowtel serve`` reads the history through.

The web view never writes, and the database makes sure of it: this is
:func:`exporters.db.engine.make_read_engine` (a SQLite file opened through a ``mode=ro`` URI,
never created nor switched to WAL; PostgreSQL and MariaDB sessions that are read-only on the
server), plus the one refusal a server needs: an in-memory SQLite database, which would be a
new, empty history of the server's own. A read-only database role (docs/serve.md) adds the
server's own guarantee.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, Engine

from exporters.db.engine import DatabaseURLError, make_read_engine, resolve_database_url

__all__ = ["readonly_engine"]


def readonly_engine(database_url: str | URL | None = None) -> Engine:
    """An engine that can only read the history database at *database_url*.

    The URL is resolved as everywhere else (argument, ``FLOWTEL_DATABASE_URL``,
    ``sqlite:///flowtel.db``).

    Raises:
        DatabaseURLError: the URL cannot be parsed, is an in-memory SQLite database, or its
            driver is not installed.
    """
    url = resolve_database_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise DatabaseURLError("flowtel serve needs a SQLite file, not an in-memory database")
    return make_read_engine(url)
