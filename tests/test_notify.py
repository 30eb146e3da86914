"""Tests for ``flowtel notify``: one notice per finished run, retried with backoff, resumable.

A real HTTP server on loopback (in a thread, stopped by its fixture) takes the webhook's POSTs
and can refuse the first attempts; the history is a real database on each backend.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import sqlite3
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from exporters.cli import main
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.notify import (
    CommandDelivery,
    DeliveryError,
    Follower,
    NotifyState,
    StateFileError,
    WebhookDelivery,
)
from exporters.query.store import HistoryStore

from .test_queries import T0, add, run_row, step_row
from .test_queries import engine as engine  # the fixture, on every backend


class Receiver:
    """A webhook on 127.0.0.1 that answers *failures* 503s first, then 200, keeping each body."""

    def __init__(self, failures: int = 0, *, retry_after: str | None = None) -> None:
        self.failures = failures
        self.retry_after = retry_after
        self.attempts = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(503)
                    if receiver.retry_after is not None:
                        self.send_header("Retry-After", receiver.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                receiver.headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook that takes every POST."""
    server = Receiver()
    yield server
    server.close()


def db_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def seed(engine: Engine) -> None:
    """Two failed runs, one completed and one still running, ended a minute apart."""
    add(
        engine,
        [
            run_row("run-a", status="failed", completed_at=T0 + dt.timedelta(minutes=1),
                    error_type="TimeoutError", error_message="no answer from the BMC",
                    current_step="setup_ipmi"),
            run_row("run-b", status="completed", completed_at=T0 + dt.timedelta(minutes=2)),
            run_row("run-c", status="failed", completed_at=T0 + dt.timedelta(minutes=3),
                    workflow_id="provision_srv-0002"),
            run_row("run-d", status="running", completed_at=None),
        ],
        [
            step_row("run-a", 1, "select_machine"),
            step_row("run-a", 2, "setup_ipmi", status="failed", error_type="TimeoutError",
                     error_message="no answer from the BMC"),
        ],
    )  # fmt: skip


def notify(engine: Engine, *args: str) -> Result:
    return CliRunner().invoke(main, ["notify", "--db", db_of(engine), *args])


def test_notify_posts_one_document_per_failed_run_with_its_failed_step_and_link(
    engine: Engine, receiver: Receiver, tmp_path: Path
) -> None:
    seed(engine)
    result = notify(
        engine, "--webhook", receiver.url, "--once", "--since", "2026-11-01T11:00:00Z",
        "--base-url", "http://history.example:8080/", "--state", str(tmp_path / "state.json"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [body["run_id"] for body in receiver.bodies] == ["run-a", "run-c"]
    first = receiver.bodies[0]
    assert first["event"] == "run.finished"
    assert first["status"] == "failed"
    assert first["workflow_id"] == "provision_srv-0001"
    assert first["failed_step"] == {
        "name": "setup_ipmi", "index": 2, "attempt": 1,
        "error_type": "TimeoutError", "error_message": "no answer from the BMC",
    }  # fmt: skip
    assert first["error_message"] == "no answer from the BMC"
    assert first["url"] == "http://history.example:8080/runs/run-a"
    assert first["completed_at"] == "2026-11-01T12:01:00.000000Z"
    assert receiver.headers[0]["X-Flowtel-Run-Id"] == "run-a"
    assert "s3cret" not in result.output  # the webhook's token is never printed


def test_notify_status_option_selects_completed_runs_only(
    engine: Engine, receiver: Receiver
) -> None:
    seed(engine)
    result = notify(engine, "--webhook", receiver.url, "--once", "--since", "2026-11-01",
                    "--status", "completed")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [body["run_id"] for body in receiver.bodies] == ["run-b"]


def test_notify_workflow_option_filters_by_workflow_name(
    engine: Engine, receiver: Receiver
) -> None:
    seed(engine)
    add(engine, [run_row("run-e", status="failed", workflow_name="rack_audit",
                         completed_at=T0 + dt.timedelta(minutes=4))])  # fmt: skip
    result = notify(engine, "--webhook", receiver.url, "--once", "--since", "2026-11-01",
                    "--workflow", "rack_audit")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [body["run_id"] for body in receiver.bodies] == ["run-e"]


def test_notify_retries_a_failing_webhook_until_it_takes_the_notice_once(
    engine: Engine, tmp_path: Path
) -> None:
    seed(engine)
    server = Receiver(failures=3)
    try:
        result = notify(engine, "--webhook", server.url, "--once", "--since", "2026-11-01",
                        "--retry-delay", "0.01")  # fmt: skip
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert server.attempts == 5  # 3 refused + run-a taken + run-c taken
    assert [body["run_id"] for body in server.bodies] == ["run-a", "run-c"]
    assert "retrying in" in result.output
    assert "after 4 attempts" in result.output


def test_a_restart_with_the_state_file_neither_repeats_nor_skips_a_run(
    engine: Engine, receiver: Receiver, tmp_path: Path
) -> None:
    state = tmp_path / "notify.json"
    seed(engine)
    first = notify(engine, "--webhook", receiver.url, "--once", "--since", "2026-11-01",
                   "--state", str(state))  # fmt: skip
    assert first.exit_code == 0, first.output
    # a run that ended at the very time of the last one delivered, and one that ended later
    add(engine, [
        run_row("run-c2", status="failed", completed_at=T0 + dt.timedelta(minutes=3)),
        run_row("run-f", status="failed", completed_at=T0 + dt.timedelta(minutes=9)),
    ])  # fmt: skip
    second = notify(engine, "--webhook", receiver.url, "--once", "--state", str(state))
    assert second.exit_code == 0, second.output
    third = notify(engine, "--webhook", receiver.url, "--once", "--state", str(state))
    assert third.exit_code == 0, third.output
    assert [body["run_id"] for body in receiver.bodies] == ["run-a", "run-c", "run-c2", "run-f"]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600


def test_a_run_that_reaches_the_database_late_within_the_lookback_is_still_sent(
    engine: Engine, receiver: Receiver, tmp_path: Path
) -> None:
    state = tmp_path / "notify.json"
    seed(engine)
    notify(engine, "--webhook", receiver.url, "--once", "--since", "2026-11-01",
           "--state", str(state))  # fmt: skip
    # replayed from a spool after an outage: it ended before the last run delivered
    add(engine, [run_row("run-late", status="failed", completed_at=T0 + dt.timedelta(minutes=2))])
    result = notify(engine, "--webhook", receiver.url, "--once", "--state", str(state))
    assert result.exit_code == 0, result.output
    assert [body["run_id"] for body in receiver.bodies][-1] == "run-late"
    assert len(receiver.bodies) == 3


def test_a_notice_refused_max_attempts_times_is_given_up_listed_and_the_next_is_sent(
    engine: Engine, tmp_path: Path
) -> None:
    seed(engine)
    state = tmp_path / "notify.json"
    server = Receiver(failures=2)
    try:
        result = notify(engine, "--webhook", server.url, "--once", "--since", "2026-11-01",
                        "--max-attempts", "2", "--retry-delay", "0", "--state", str(state))
    finally:
        server.close()
    assert result.exit_code == 0, result.output
    assert [body["run_id"] for body in server.bodies] == ["run-c"]
    assert json.loads(state.read_text())["undelivered"] == ["run-a"]
    assert "1 given up" in result.output


def test_exec_gives_the_command_the_json_on_its_standard_input(
    engine: Engine, tmp_path: Path
) -> None:
    seed(engine)
    out = tmp_path / "notices.jsonl"
    script = tmp_path / "append.py"
    script.write_text(
        "import sys\n"
        f"open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')\n"
    )
    result = notify(engine, "--exec", f"{sys.executable} {script}", "--once",
                    "--since", "2026-11-01")  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = [json.loads(line)["run_id"] for line in out.read_text().splitlines()]
    assert runs == ["run-a", "run-c"]


def test_a_failing_command_is_a_failed_attempt_with_its_last_stderr_line(
    tmp_path: Path,
) -> None:
    delivery = CommandDelivery([sys.executable, "-c", "import sys; sys.exit('disk is full')"])
    with pytest.raises(DeliveryError, match="exited with status 1: disk is full"):
        delivery.send(b"{}", run_id="r")


def test_retry_after_from_the_webhook_sets_the_next_delay(
    engine: Engine, tmp_path: Path
) -> None:
    seed(engine)
    server = Receiver(failures=1, retry_after="7")
    slept: list[float] = []
    state = NotifyState(None, start=T0 - dt.timedelta(hours=1), lookback=dt.timedelta(hours=1))
    follower = Follower(
        HistoryStore(engine),
        WebhookDelivery(server.url),
        state,
        statuses=["failed"],
        retry_delay=0.5,
        sleep=slept.append,
    )
    try:
        assert follower.poll() == 2
    finally:
        server.close()
    assert slept == [7.0]
    assert follower.stats.failures == 1


def test_options_refuse_both_or_neither_target_and_a_non_http_webhook(engine: Engine) -> None:
    seed(engine)
    neither = notify(engine, "--once")
    both = notify(engine, "--once", "--webhook", "http://127.0.0.1:1/", "--exec", "true")
    ftp = notify(engine, "--once", "--webhook", "ftp://example/")
    assert neither.exit_code == both.exit_code == ftp.exit_code == 2
    assert "one of --webhook URL or --exec CMD" in neither.output
    assert "http:// or https://" in ftp.output


def test_a_damaged_state_file_is_an_error_naming_it_not_a_fresh_start(
    engine: Engine, receiver: Receiver, tmp_path: Path
) -> None:
    seed(engine)
    state = tmp_path / "notify.json"
    state.write_text("{not json")
    result = notify(engine, "--webhook", receiver.url, "--once", "--state", str(state))
    assert result.exit_code == 1
    assert f"cannot read the notify state file {state}" in result.output
    assert receiver.bodies == []


def test_a_state_file_that_cannot_be_replaced_is_an_error_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.json"
    state = NotifyState(path, start=T0, lookback=dt.timedelta(hours=1))
    path.mkdir()  # something else took the name: the rename over it fails, even for root
    (path / "keep").write_text("x")
    with pytest.raises(StateFileError, match="cannot write the notify state file"):
        state.record("run-x", T0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_an_unreachable_database_with_once_is_exit_status_3(receiver: Receiver) -> None:
    result = CliRunner().invoke(
        main,
        ["notify", "--db", "postgresql+psycopg://flowtel:pw@127.0.0.1:1/flowtel",
         "--webhook", receiver.url, "--once"],
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "pw" not in result.output.replace("psycopg", "")


def test_finished_runs_lists_final_runs_in_completed_at_order_from_since(
    engine: Engine,
) -> None:
    seed(engine)
    store = HistoryStore(engine)
    found = store.finished_runs(since=T0 + dt.timedelta(minutes=2))
    assert [run.run_id for run in found] == ["run-b", "run-c"]
    with pytest.raises(ValueError, match="statuses"):
        store.finished_runs(since=T0, statuses=[])


def test_notify_opens_the_history_read_only_and_leaves_a_sqlite_file_byte_identical(
    tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "app.db"
    writer = make_engine(f"sqlite:///{path}")
    create_schema(writer)
    seed(writer)
    writer.dispose()
    with closing(sqlite3.connect(path)) as connection:  # as another application keeps it
        connection.execute("PRAGMA journal_mode=DELETE")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(
        main, ["notify", "--db", f"sqlite:///{path}", "--webhook", receiver.url, "--once",
               "--since", "2026-11-01"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(receiver.bodies) == 2
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_a_run_pruned_between_the_poll_and_its_read_is_counted_and_the_next_is_sent(
    engine: Engine, receiver: Receiver
) -> None:
    seed(engine)

    class PrunedMeanwhile(HistoryStore):
        """Lists a run whose row retention deletes before the follower reads it."""

        def finished_runs(self, **kwargs: Any) -> list[Any]:
            found = super().finished_runs(**kwargs)
            return [dataclasses.replace(found[0], run_id="run-gone"), *found]

    state = NotifyState(None, start=T0 - dt.timedelta(hours=1), lookback=dt.timedelta(hours=1))
    follower = Follower(
        PrunedMeanwhile(engine), WebhookDelivery(receiver.url), state, statuses=["failed"]
    )
    assert follower.poll() == 2
    assert [body["run_id"] for body in receiver.bodies] == ["run-a", "run-c"]
    assert follower.stats.vanished == 1 and state.delivered("run-gone")
