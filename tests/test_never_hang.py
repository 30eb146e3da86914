"""``configure()`` returns in bounded time whatever the database does; so does ``shutdown()``.

The database here is a server that accepts TCP connections and never answers: before, against
MariaDB ``configure()`` never returned (PyMySQL's connect timeout covers only the TCP connect,
the handshake read had no timeout) and against PostgreSQL it blocked for the connect timeout.
Each case runs in a child process (``configure()`` installs the global provider) with a bound
on the child, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from exporters.db.engine import make_engine
from tests.collector_support import run_child
from tests.pg_private import PrivatePostgres

CHILD = """
import json, socket, threading, time
from pathlib import Path

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
held = []

def accept_and_stay_silent():
    while True:
        connection, _ = server.accept()
        held.append(connection)  # never read, never answered, never closed

threading.Thread(target=accept_and_stay_silent, daemon=True).start()
port = server.getsockname()[1]

from exporters import configure
from instrumentation import workflow_run

started = time.monotonic()
handle = configure(
    database_url={url!r}.replace("PORT", str(port)),
    logs=False, otlp=False, spool_dir={spool!r}, spool_after=0.2,
)
configure_s = time.monotonic() - started
with workflow_run("wf") as run, run.step("s"):
    pass
started = time.monotonic()
handle.shutdown(3000)
shutdown_s = time.monotonic() - started
spooled = sorted(p.name for p in Path({spool!r}).rglob("*") if p.is_file())
print(json.dumps({{"configure_s": configure_s, "shutdown_s": shutdown_s, "spooled": spooled,
                   "stats": handle.processor.stats}}))
"""


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "postgresql+psycopg"])
def test_configure_and_shutdown_are_bounded_against_a_silent_server(
    tmp_path: Path, scheme: str
) -> None:
    spool = tmp_path / "spool"
    try:
        url = f"{scheme}://flowtel:pw@127.0.0.1:PORT/flowtel"
        done = run_child(CHILD.format(url=url, spool=str(spool)), timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail(f"configure() or shutdown() hung against a silent {scheme} server")
    check(done)


def check(done: subprocess.CompletedProcess[str]) -> None:
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["configure_s"] < 3.0, result
    assert result["shutdown_s"] < 6.0, result
    assert result["spooled"], result  # the run's rows wait in the spool, none lost
    assert "Traceback" not in done.stderr


def test_configure_and_shutdown_are_bounded_against_a_frozen_postgresql(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """The private cluster's postmaster is stopped (SIGSTOP): it accepts, never answers."""
    url = private_postgres.new_database()
    pid = int((private_postgres.data / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        done = run_child(CHILD.format(url=url, spool=str(tmp_path / "spool")), timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("configure() or shutdown() hung against a frozen PostgreSQL")
    finally:
        os.kill(pid, signal.SIGCONT)
    check(done)


def connect_arguments(url: str) -> dict[str, Any]:
    """The keyword arguments the engine hands the driver (captured; the connect is refused)."""
    engine = make_engine(url)
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)

    with pytest.raises(sa.exc.OperationalError):
        engine.connect().close()
    engine.dispose()
    return seen


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "postgresql+psycopg"])
def test_every_server_driver_gets_connect_and_read_timeouts(scheme: str) -> None:
    """The connect and every read and write on the socket are bounded."""
    args = connect_arguments(f"{scheme}://u:p@127.0.0.1:1/x")
    if scheme.startswith("mysql"):
        assert args["connect_timeout"] and args["read_timeout"] and args["write_timeout"]
    else:
        assert args["connect_timeout"] and args["tcp_user_timeout"] and args["keepalives"]
        assert "statement_timeout" in args["options"]


def test_url_settings_win_over_the_defaults() -> None:
    args = connect_arguments("mysql+pymysql://u:p@127.0.0.1:1/x?read_timeout=600&connect_timeout=3")
    assert (int(args["read_timeout"]), int(args["connect_timeout"])) == (600, 3)


def test_sqlite_waits_for_a_lock_a_bounded_time(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    with engine.connect() as connection:
        timeout_ms = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
    engine.dispose()
    assert 0 < int(timeout_ms or 0) <= 60_000
