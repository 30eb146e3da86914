"""Retention as a policy: ``--keep``, ``FLOWTEL_RETENTION``, ``configure(retention=...)``, ingest's
``--retention``, the background pass, and ``flowtel db size``.

Runs of every status are written at fixed ages into real SQLite, PostgreSQL and MariaDB
databases (the fixture of ``test_retention``); the tests check which runs and steps remain after a
policy, what each pass logs, that a pass against a database that is down is logged and retried,
that ``configure`` and ``flowtel ingest`` (real child processes) start and stop the pass, and the
rows and bytes ``flowtel db size`` reports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporters import make_engine
from exporters.cli import main
from exporters.ops.policy import RetentionPolicy, apply_policy, policy_from_env
from exporters.ops.schedule import RetentionRunner
from exporters.ops.size import history_size
from tests.collector_support import ROOT, run_child
from tests.test_retention import NOW, RUNS, fill, remaining

OLD_COMPLETED = {"old-completed-1", "old-completed-2", "old-completed-3"}


def test_policy_text_names_statuses_with_durations_and_refuses_what_it_cannot_keep() -> None:
    policy = RetentionPolicy.parse(" failed=180d, completed=30d ,cancelled=12w")
    assert policy.keep == (
        ("cancelled", dt.timedelta(weeks=12)),
        ("completed", dt.timedelta(days=30)),
        ("failed", dt.timedelta(days=180)),
    )
    assert str(policy) == "cancelled=84d,completed=30d,failed=180d"
    for text, says in (
        ("running=1d", "runs in progress are never deleted"),
        ("pending=1d", "runs in progress are never deleted"),
        ("done=1d", "unknown status 'done'"),
        ("completed=1d,completed=2d", "twice"),
        ("completed", "expected STATUS=DURATION"),
        ("completed=soon", "completed=soon"),
        ("", "policy is empty"),
    ):
        with pytest.raises(ValueError, match=says):
            RetentionPolicy.parse(text)
    assert policy_from_env({}) is None
    assert policy_from_env({"FLOWTEL_RETENTION": "off"}) is None
    assert str(policy_from_env({"FLOWTEL_RETENTION": "failed=1d"})) == "failed=1d"
    with pytest.raises(ValueError, match="FLOWTEL_RETENTION='failed'"):
        policy_from_env({"FLOWTEL_RETENTION": "failed"})


def test_policy_deletes_each_named_status_by_its_age_and_keeps_the_rest(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = fill(db_url)
    policy = RetentionPolicy.parse("completed=30d,failed=180d,cancelled=90d")
    try:
        with caplog.at_level(logging.INFO, logger="flowtel.retention"):
            result = apply_policy(engine, policy, batch_size=2, now=NOW)
        runs, steps = remaining(engine)
    finally:
        engine.dispose()
    gone = OLD_COMPLETED | {"old-cancelled"}
    assert runs == steps == set(RUNS) - gone  # failed (100 d < 180 d), active, undated kept
    assert [(r.status, r.runs_deleted, r.steps_deleted) for r in result.results] == [
        ("cancelled", 1, 2),
        ("completed", 3, 6),
        ("failed", 0, 0),
    ]
    assert (result.runs_deleted, result.steps_deleted, result.batches) == (4, 8, 3)
    [record] = [r for r in caplog.records if r.name == "flowtel.retention"]
    assert record.getMessage() == (
        "flowtel retention pass (cancelled=90d,completed=30d,failed=180d): deleted 4 runs "
        "(cancelled 1, completed 3, failed 0) and 8 steps in 3 batches"
    )


def test_prune_keep_deletes_by_policy_and_reports_per_status_as_json(db_url: str) -> None:
    fill(db_url, now=dt.datetime.now(dt.UTC)).dispose()
    runner = CliRunner()
    dry = runner.invoke(
        main, ["db", "prune", "--db", db_url, "--keep", "completed=30d", "--dry-run", "--json"]
    )
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["runs_deleted"] == 3
    done = runner.invoke(main, ["db", "prune", "--db", db_url, "--keep", "completed=30d"])
    assert done.exit_code == 0, done.output
    assert "Deleted 3 completed runs and 6 steps" in done.output
    assert "failed, cancelled, abandoned runs are kept" in done.output
    engine = make_engine(db_url)
    runs, _ = remaining(engine)
    engine.dispose()
    assert runs == set(RUNS) - OLD_COMPLETED


def test_prune_needs_older_than_or_keep_and_refuses_active_statuses(db_url: str) -> None:
    runner = CliRunner()
    neither = runner.invoke(main, ["db", "prune", "--db", db_url])
    both = runner.invoke(
        main, ["db", "prune", "--db", db_url, "--older-than", "1d", "--keep", "failed=1d"]
    )
    active = runner.invoke(main, ["db", "prune", "--db", db_url, "--keep", "running=1d"])
    status = runner.invoke(
        main, ["db", "prune", "--db", db_url, "--keep", "failed=1d", "--status", "failed"]
    )
    assert [r.exit_code for r in (neither, both, active, status)] == [2, 2, 2, 2]
    assert "either --older-than AGE or --keep" in neither.output
    assert "runs in progress are never deleted" in active.output
    assert "--keep names its statuses" in status.output


def test_runner_applies_the_policy_in_the_background_and_stops(db_url: str) -> None:
    engine = fill(db_url, now=dt.datetime.now(dt.UTC))
    runner = RetentionRunner(
        engine, RetentionPolicy.parse("completed=30d"), interval=3600, first_delay=0
    )
    try:
        runner.start()
        deadline = time.monotonic() + 30
        while runner.passes == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.stop(10)
        runs, _ = remaining(engine)
    finally:
        runner.stop(10)
        engine.dispose()
    assert runner.passes == 1 and runner.failures == 0  # the next pass is an hour away
    assert runner.last is not None and runner.last.runs_deleted == 3
    assert runs == set(RUNS) - OLD_COMPLETED


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_runner_logs_a_pass_against_a_database_that_is_down_and_tries_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"postgresql+psycopg://flowtel:secret-pw@127.0.0.1:{free_port()}/flowtel"
    engine = make_engine(down)
    runner = RetentionRunner(engine, RetentionPolicy.parse("failed=1d"), first_delay=0)
    try:
        with caplog.at_level(logging.WARNING, logger="flowtel.retention"):
            assert runner.run_once() is None
            assert runner.run_once() is None
    finally:
        engine.dispose()
    assert (runner.passes, runner.failures) == (0, 2)
    messages = [r.getMessage() for r in caplog.records if r.name == "flowtel.retention"]
    assert len(messages) == 2
    assert messages[0].startswith("flowtel retention pass failed (tried again in 3600 s): ")
    assert "OperationalError" in messages[0] and "secret-pw" not in messages[0]


def test_configure_retention_runs_the_pass_and_shutdown_stops_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    fill(url, now=dt.datetime.now(dt.UTC)).dispose()
    code = f"""
import json, time
from exporters import configure
from exporters.ops import schedule
handle = configure(database_url={url!r}, logs=False, otlp=False, retention="completed=30d")
runner = handle.retention
runner.run_once()
alive = runner._thread.is_alive()
handle.shutdown(5000)
print(json.dumps({{"policy": str(runner.policy), "alive": alive, "passes": runner.passes,
                  "deleted": runner.last.runs_deleted, "after": runner._thread.is_alive()}}))
"""
    done = run_child(code, timeout=60)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {
        "policy": "completed=30d",
        "alive": True,
        "passes": 1,
        "deleted": 3,
        "after": False,
    }


def test_configure_reads_flowtel_retention_and_refuses_a_bad_policy(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    code = f"""
import json
from exporters import configure
handle = configure(database_url={url!r}, logs=False, otlp=False)
policy = str(handle.retention.policy)
handle.shutdown(5000)
off = configure(database_url={url!r}, logs=False, otlp=False, retention="off")
none = off.retention is None
off.shutdown(5000)
try:
    configure(database_url={url!r}, logs=False, otlp=False, retention="running=1d")
    error = None
except ValueError as exc:
    error = str(exc)
print(json.dumps({{"policy": policy, "off": none, "error": error}}))
"""
    done = run_child(code, env={"FLOWTEL_RETENTION": "failed=180d"}, timeout=60)
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "policy": "failed=180d",
        "off": True,
        "error": "retention cannot name 'running': runs in progress are never deleted",
    }


def test_ingest_retention_starts_the_pass_and_stops_it_with_the_server(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "ingest.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTEL_SPOOL_DIR": str(tmp_path)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporters.cli", "ingest", "--db",
             f"sqlite:///{tmp_path}/h.db", "--listen", f"127.0.0.1:{port}",
             "--retention", "completed=30d,failed=180d"],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "a pass every" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text()
    assert code == 0, text
    assert "flowtel retention: policy completed=30d,failed=180d, a pass every 3600 s" in text


def test_ingest_refuses_a_retention_policy_it_cannot_read() -> None:
    result = CliRunner().invoke(main, ["ingest", "--retention", "completed"])
    assert result.exit_code == 2
    assert "expected STATUS=DURATION" in result.output


def test_db_size_counts_rows_and_shares_bytes_per_table_and_status(db_url: str) -> None:
    engine = fill(db_url)
    try:
        report = history_size(engine)
    finally:
        engine.dispose()
    tables = {t.table: t for t in report.tables}
    runs = tables["workflow_history"]
    statuses = {s.status: s.rows for s in runs.statuses}
    assert runs.rows == len(RUNS) and statuses["completed"] == 5 and statuses["failed"] == 2
    assert tables["workflow_step_history"].rows == 2 * len(RUNS)
    for table in report.tables:
        assert table.bytes > 0
        if table.statuses:
            shared = sum(s.bytes for s in table.statuses)
            assert abs(shared - table.bytes) <= len(table.statuses)  # rounding only
    out = CliRunner().invoke(main, ["db", "size", "--db", db_url, "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["bytes"] == sum(t["bytes"] for t in shown["tables"])
    assert "secret" not in shown["database"]
    text = CliRunner().invoke(main, ["db", "size", "--db", db_url])
    assert "workflow_history" in text.output and "completed" in text.output


def test_db_size_says_there_is_no_database_instead_of_creating_one(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    out = CliRunner().invoke(main, ["db", "size", "--db", f"sqlite:///{path}"])
    assert out.exit_code == 0 and "There is no database at" in out.output
    assert not path.exists()


def test_runner_stop_does_not_wait_for_a_silent_database_whose_pass_then_fails_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    held: list[socket.socket] = []

    def accept_and_stay_silent() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])  # never answered

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    port = server.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://flowtel:pw@127.0.0.1:{port}/flowtel")
    runner = RetentionRunner(engine, RetentionPolicy.parse("failed=1d"), first_delay=0)
    try:
        with caplog.at_level(logging.WARNING, logger="flowtel.retention"):
            runner.start()
            deadline = time.monotonic() + 30
            while not held and time.monotonic() < deadline:
                time.sleep(0.05)
            assert held, "the pass never reached the database"
            stopped_at_once = runner.stop(0.2)
            runner._thread.join(120)  # the driver's timeouts end the pass
    finally:
        server.close()
        for connection in held:
            connection.close()
        engine.dispose()
    assert stopped_at_once is False  # still in the pass: shutdown went on without it
    assert not runner._thread.is_alive()
    assert (runner.passes, runner.failures) == (0, 1)
    [message] = [r.getMessage() for r in caplog.records if r.name == "flowtel.retention"]
    assert message.startswith("flowtel retention pass failed")
