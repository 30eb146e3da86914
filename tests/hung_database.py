"""A real database that can be made to hang — accept, and never answer — and to wake again.

For PostgreSQL and MariaDB, :class:`FreezableProxy` is a loopback TCP relay in front of the real
server: thawed it relays both ways; frozen it still accepts connections but relays no byte in
either direction, so a client's query (or its connection handshake) waits for an answer that
does not come — what a server behind a network partition, or a stopped process, looks like.
Thawing relays what was held, and the waiting calls complete. For SQLite, :class:`SqliteLock`
holds ``BEGIN EXCLUSIVE`` on another connection: every write waits in SQLite's busy handler
until the lock is released. The ``hangable`` fixture gives one of them per backend, and stops
its threads and sockets whatever the test's outcome.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import pytest
import sqlalchemy as sa

from exporters.db.schema import metadata

__all__ = ["FreezableProxy", "Hangable", "SqliteLock", "hangable", "refusable"]


class Hangable(Protocol):
    """A database the test can hang and wake; :attr:`url` is what flowtel connects to."""

    url: str

    def hang(self) -> None: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


class FreezableProxy:
    """A loopback TCP relay to *target* that can stop relaying without closing anything.

    Args:
        url: the real server's URL; :attr:`url` is the same with the proxy's host and port.
    """

    def __init__(self, url: str) -> None:
        real = sa.make_url(url)
        self._target = (real.host or "127.0.0.1", int(real.port or 5432))
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        port = int(self._listener.getsockname()[1])
        self.url = real.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
        self._flowing = threading.Event()
        self._flowing.set()
        self._refusing = False
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def hang(self) -> None:
        """Stop relaying: connections are still accepted, nothing is answered."""
        self._flowing.clear()

    def refuse(self) -> None:
        """Go down: every connection is closed, new ones are closed as soon as accepted."""
        self._refusing = True
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def wake(self) -> None:
        """Relay again (what was held first), and accept connections again."""
        self._refusing = False
        self._flowing.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            self._start(self._pump, client, upstream)
            self._start(self._pump, upstream, client)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while not self._closed.is_set():
            if not self._flowing.wait(0.05):
                continue
            try:
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready:
                    continue
                self._flowing.wait()  # frozen meanwhile: hold what is waiting to be read
                if self._closed.is_set():
                    return
                data = source.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except (OSError, ValueError):  # ValueError: closed by close() meanwhile
                return

    def close(self) -> None:
        """Close every socket and end every thread."""
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._threads[0].join(5)  # the accepting thread: no socket is added after this
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads[1:]:
            thread.join(5)


class SqliteLock:
    """Hangs a SQLite database by holding its write lock on a connection of the test's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._path = sa.make_url(url).database or ""
        self._connection: sqlite3.Connection | None = None

    def hang(self) -> None:
        """Take the write lock: flowtel's writes wait in SQLite's busy handler."""
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")
        self._connection = connection

    def wake(self) -> None:
        """Release the lock."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.rollback()
            connection.close()

    def close(self) -> None:
        """Release the lock if held."""
        self.wake()


@pytest.fixture
def hangable(db_url: str) -> Iterator[Hangable]:
    """The test's database (every backend), ready to hang and wake."""
    backend = sa.make_url(db_url).get_backend_name()
    target: Hangable = SqliteLock(db_url) if backend == "sqlite" else FreezableProxy(db_url)
    try:
        yield target
    finally:
        target.close()


@pytest.fixture(params=["postgresql", "mysql"])
def refusable(request: pytest.FixtureRequest, server_database: Any) -> Iterator[FreezableProxy]:
    """The server backends behind a relay that can also go down (refuse) and come back (SQLite
    has no such outage: its outage is a lock, :class:`SqliteLock`)."""
    url = str(server_database[request.param])
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    proxy = FreezableProxy(url)
    try:
        yield proxy
    finally:
        proxy.close()
