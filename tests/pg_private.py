"""A private PostgreSQL cluster for fault tests: ours to stop and start, nobody else's.

The ``private_postgres`` fixture runs ``initdb`` in a temporary directory (as the ``postgres``
user when the tests run as root, since the server refuses to run as root) and starts the
server on a free loopback port with durability switched off (these databases are thrown
away). It lives for the whole session; stopping it (``pg_ctl stop -m fast``: clients are
disconnected at once, new connections are refused) is a real outage for the test that does it
and for no one else, which the shared server on 5432 cannot offer. The binaries are found with
``pg_config --bindir`` or under ``/usr/lib/postgresql/<version>/bin`` (Debian's packages).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

__all__ = ["PrivatePostgres", "private_postgres"]


def _bindir() -> Path | None:
    config = shutil.which("pg_config")
    if config:
        done = subprocess.run([config, "--bindir"], capture_output=True, text=True)
        found = Path(done.stdout.strip())
        if (found / "initdb").exists():
            return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(x) for x in p.parent.parent.name.split(".") if x.isdigit()],
    )
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivatePostgres:
    """One throw-away cluster: ``start()``, ``stop()``, ``new_database()``."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.home = Path(tempfile.mkdtemp(prefix="flowtel-pg-"))
        self.data = self.home / "data"
        self.port = _free_port()
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.home, self._user.pw_uid, self._user.pw_gid)
        self.url = sa.make_url(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            command = ["runuser", "-u", self._user.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.home)
        if done.returncode != 0:
            log = self.home / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}\n{tail}")

    def initdb(self) -> None:
        """Create the cluster: trust authentication on loopback only."""
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "server.log"), "-w",
                  "-o", options, "start")  # fmt: skip

    def stop(self) -> None:
        """Stop the server now: sessions are disconnected, new connections refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def new_database(self) -> str:
        """Create an empty database and return its URL (with the password-less user)."""
        name = f"flowtel_{random.getrandbits(32):08x}"
        admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            admin.dispose()
        return self.url.set(database=name).render_as_string(hide_password=False)

    def destroy(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server this session may stop and start at will."""
    from tests.conftest import missing_service

    bindir = _bindir()
    if bindir is None:
        missing_service("a PostgreSQL server binary (initdb)", "apt-get install postgresql")
    assert bindir is not None
    server = PrivatePostgres(bindir)
    try:
        server.initdb()
        server.start()
    except (RuntimeError, KeyError, OSError) as exc:
        server.destroy()
        missing_service("a private PostgreSQL cluster", f"initdb/pg_ctl failed: {exc}")
    yield server
    server.destroy()
