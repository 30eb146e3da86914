"""The SQL recipes of docs/sql.md run unchanged, with the same answers, on every database.

Each ``## title`` section's ```sql block is read from the markdown itself, so the documentation
and the tests cannot drift apart, and executed as written on SQLite, PostgreSQL and MariaDB over
one small history whose answers are known. Values are normalised only where the drivers differ
in type (dates as text on SQLite, ``Decimal`` on PostgreSQL and MariaDB, JSON as text).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert
from sqlalchemy.engine import Engine

from exporters.db.engine import make_engine
from exporters.db.schema import create_schema, workflow_history, workflow_step_history
from exporters.query.store import AmbiguousRunError, HistoryStore

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
TRACE = "0af7651916cd43dd8448eb211c80319c"
STACK = 'Traceback (most recent call last):\n  File "provision.py", line 9\nTimeoutError: late\n'
LOGS = [{"at": "2026-11-01T09:10:00Z", "severity": "warning", "logger": "maas", "message": "slow"}]


def recipes() -> dict[str, str]:
    """``{title: sql}`` for every ``## title`` of docs/sql.md with a ```sql block."""
    found = re.findall(r"^## (.+?)\n.*?^```sql\n(.*?)^```", RECIPES.read_text(), re.M | re.S)
    return {title.strip(): sql.strip().rstrip(";") for title, sql in found}


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A UTC time in November 2026 (day 0 is 2026-10-20)."""
    if day == 0:
        return dt.datetime(2026, 10, 20, hour, minute, tzinfo=dt.UTC)
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


# fmt: off
# run_id, workflow, server, device, status, start, duration_ms, current step, error type
RUNS = [
    ("run-0", "provision_server", "srv-0001", "s2_c2_small", "completed", at(0, 8), 1_200_000,
     "mark_server_ready", None),
    ("run-1", "provision_server", "srv-0001", "s2_c2_small", "completed", at(1, 8), 1_500_000,
     "mark_server_ready", None),
    ("run-2", "provision_server", "srv-0002", "a1_c5_large", "failed", at(1, 9), 600_000,
     "wait_for_commissioning", "TimeoutError"),
    ("run-3", "provision_server", "srv-0003", "s2_c2_small", "completed", at(2, 10), 1_800_000,
     "mark_server_ready", None),
    ("run-4", "provision_server", "srv-0002", "a1_c5_large", "failed", at(2, 11), 900_000,
     "verify_ipmi_reachable", "ConnectionError"),
    ("run-5", "provision_server", "srv-0004", "g1_c4_gpu", "running", at(3, 12), None,
     "configure_network", None),
    ("run-6", "decommission_server", "srv-0005", "s2_c2_small", "completed", at(3, 13), 300_000,
     "power_off", None),
    ("run-7", "provision_server", "srv-0006", "g1_c4_gpu", "failed", at(3, 14), 1_200_000,
     "verify_bios_settings", "BiosVerificationError"),
]
# fmt: on

# run_id, index, name, attempt, status, duration_ms, error type, error message
STEPS = [
    ("run-0", 1, "select_machine", 1, "completed", 1000, None, None),
    ("run-1", 1, "select_machine", 1, "completed", 2000, None, None),
    ("run-1", 4, "wait_for_commissioning", 1, "completed", 600_000, None, None),
    ("run-2", 1, "select_machine", 1, "completed", 3000, None, None),
    ("run-2", 4, "wait_for_commissioning", 1, "failed", 590_000, "TimeoutError", "still late"),
    ("run-3", 1, "select_machine", 1, "completed", 1000, None, None),
    ("run-3", 16, "verify_ipmi_reachable", 1, "retrying", 3000, None, None),
    ("run-3", 16, "verify_ipmi_reachable", 2, "completed", 2000, None, None),
    ("run-4", 1, "select_machine", 1, "completed", 1000, None, None),
    ("run-4", 16, "verify_ipmi_reachable", 1, "retrying", 3000, None, None),
    ("run-4", 16, "verify_ipmi_reachable", 2, "failed", 3000, "ConnectionError", "no answer"),
    ("run-5", 1, "select_machine", 1, "completed", 2000, None, None),
    ("run-5", 6, "configure_network", 1, "running", None, None, None),
    ("run-6", 1, "drain_server", 1, "completed", 60_000, None, None),
    ("run-7", 1, "select_machine", 1, "completed", 4000, None, None),
    ("run-7", 20, "verify_bios_settings", 1, "failed", 5000, "BiosVerificationError", "SR-IOV"),
]


def seed(engine: Engine) -> None:
    """Insert the runs and steps above."""
    starts = {run[0]: run[5] for run in RUNS}
    with engine.begin() as conn:
        for run_id, name, server, device, status, start, ms, step, error in RUNS:
            end = start + dt.timedelta(milliseconds=ms) if ms is not None else None
            conn.execute(
                insert(workflow_history).values(
                    run_id=run_id,
                    workflow_name=name,
                    workflow_id=f"{name.split('_')[0]}_{server}",
                    server_id=server,
                    device_type=device,
                    status=status,
                    started_at=start,
                    completed_at=end,
                    duration_ms=ms,
                    current_step=step,
                    error_type=error,
                    error_message=f"step '{step}' failed: {error}" if error else None,
                    steps_completed=3,
                    total_steps=23,
                    host="worker-1",
                    pid=7,
                    seq=1,
                    updated_at=end or start + dt.timedelta(minutes=5),
                    trace_id=TRACE if run_id == "run-7" else f"{int(run_id[-1]):032x}",
                )
            )
        for n, (run_id, index, name, attempt, status, ms, error, message) in enumerate(STEPS):
            start = starts[run_id] + dt.timedelta(minutes=index, seconds=attempt)
            conn.execute(
                insert(workflow_step_history).values(
                    run_id=run_id,
                    span_id=f"{n:016x}",
                    step_index=index,
                    step_name=name,
                    attempt=attempt,
                    status=status,
                    started_at=start,
                    duration_ms=ms,
                    completed_at=start + dt.timedelta(milliseconds=ms) if ms else None,
                    message=message,
                    error_type=error,
                    error_message=message,
                    error_stacktrace=STACK if error else None,
                    logs=LOGS if error else None,
                )
            )


def normal(value: Any) -> Any:
    """One cell as plain Python, whatever the driver: numbers, 'YYYY-MM-DD[ HH:MM:SS]', JSON."""
    if isinstance(value, decimal.Decimal | float):
        return round(float(value), 3)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", value):
        return value[:19]
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


F = "failed"
# fmt: off
# title: (expected number of rows, {row number: {column: value}}) -- columns as aliased
EXPECTED: dict[str, tuple[int, dict[int, dict[str, Any]]]] = {
    "Failed runs since a date, with the step that failed": (3, {
        0: {"run_id": "run-7", "failed_step": "verify_bios_settings", "device_type": "g1_c4_gpu"},
        2: {"run_id": "run-2", "error_type": "TimeoutError", "started_at": "2026-11-01 09:00:00"},
    }),
    "Failure rate per day": (3, {
        0: {"day": "2026-11-01", "runs": 2, F: 1, "failed_pct": 50.0},
        2: {"day": "2026-11-03", "runs": 3, F: 1, "failed_pct": 33.3},
    }),
    "Success rate per workflow (runs that ended)": (2, {
        0: {"workflow_name": "provision_server", "runs": 5, "completed": 2, "success_pct": 40.0},
        1: {"workflow_name": "decommission_server", "runs": 1, "success_pct": 100.0},
    }),
    "Runs per device type": (3, {
        0: {"device_type": "s2_c2_small", "runs": 3, F: 0},
        1: {"device_type": "a1_c5_large", "runs": 2, F: 2},
        2: {"device_type": "g1_c4_gpu", "runs": 2, F: 1},
    }),
    "Run duration per device type, in minutes": (1, {
        0: {"device_type": "s2_c2_small", "runs": 3, "avg_minutes": 20.0, "max_minutes": 30.0},
    }),
    "Failures by error type": (3, {
        0: {"error_type": "BiosVerificationError", "failed_runs": 1,
            "first_seen": "2026-11-03 14:00:00", "last_seen": "2026-11-03 14:00:00"},
        2: {"error_type": "TimeoutError", "failed_runs": 1},
    }),
    "Which steps fail, and with what": (3, {
        0: {"workflow_name": "provision_server", "step_name": "verify_bios_settings",
            "error_type": "BiosVerificationError", "failures": 1},
        2: {"step_name": "wait_for_commissioning", "error_type": "TimeoutError"},
    }),
    "Slowest steps": (4, {
        0: {"step_name": "wait_for_commissioning", "attempts": 1, "avg_ms": 600_000.0},
        1: {"step_name": "drain_server", "max_ms": 60_000},
        2: {"step_name": "select_machine", "attempts": 6, "avg_ms": 2167.0, "max_ms": 4000},
        3: {"step_name": "verify_ipmi_reachable", "attempts": 1, "avg_ms": 2000.0},
    }),
    "Retries per step": (1, {
        0: {"step_name": "verify_ipmi_reachable", "retries": 2, "runs_with_retries": 2},
    }),
    "Runs stuck in `running`": (1, {
        0: {"run_id": "run-5", "updated_at": "2026-11-03 12:05:00", "current_step": "configure_network"},  # noqa: E501
    }),
    "From a trace id to its run and its failing step": (1, {
        0: {"run_id": "run-7", "status": F, "failed_step": "verify_bios_settings"},
    }),
    "Why the latest run of a workflow id failed: error, stack trace, log lines": (1, {
        0: {"run_id": "run-4", "step_name": "verify_ipmi_reachable", "error_message": "no answer",
            "error_stacktrace": STACK, "logs": LOGS},
    }),
    "Every step attempt of one run, in order": (3, {
        1: {"step_index": 16, "attempt": 1, "status": "retrying"},
        2: {"step_index": 16, "attempt": 2, "status": "completed", "duration_ms": 2000},
    }),
    "The history of one server": (2, {
        0: {"run_id": "run-4", "error_type": "ConnectionError"},
        1: {"run_id": "run-2", "current_step": "wait_for_commissioning"},
    }),
    "Failed runs and their re-runs": (3, {
        0: {"run_id": "run-2", "failed_at": "2026-11-01 09:00:00", "rerun_id": "run-4",
            "rerun_status": F},
        1: {"run_id": "run-4", "rerun_id": None},
        2: {"run_id": "run-7", "error_type": "BiosVerificationError", "rerun_id": None},
    }),
}
# fmt: on


def test_the_document_has_a_dozen_recipes_and_every_one_is_checked() -> None:
    """At least twelve recipes, each with expectations here (a new recipe needs its own)."""
    assert len(recipes()) >= 12
    assert sorted(recipes()) == sorted(EXPECTED)


def test_recipes_run_unchanged_with_the_documented_answers(db_url: str) -> None:
    """Each recipe, as written in the markdown, runs and answers as the fixture implies."""
    engine = make_engine(db_url)
    create_schema(engine)
    seed(engine)
    failures = []
    try:
        with engine.connect() as conn:
            for title, sql in recipes().items():
                result = conn.exec_driver_sql(sql)
                columns = list(result.keys())
                rows = [dict(zip(columns, map(normal, row), strict=True)) for row in result]
                count, expected = EXPECTED[title]
                got = {n: {k: rows[n].get(k) for k in want} for n, want in expected.items()}
                if len(rows) != count or got != expected:
                    failures.append(f"{title}: {len(rows)} rows {rows}")
    finally:
        engine.dispose()
    assert failures == []


# --- indexes serve the recipes and the query API (SQLite plans, which need no statistics) ---


def plan(conn: Any, statement: str, parameters: Any = ()) -> list[str]:
    """The EXPLAIN QUERY PLAN lines of *statement* on SQLite."""
    return [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]


def full_scans(lines: list[str]) -> list[str]:
    """Plan lines that read a whole history table or index (not a subquery's few rows)."""
    subqueries = {line.split()[-1] for line in lines if line.startswith(("MATERIALIZE", "CO-ROU"))}
    return [line for line in lines if line.startswith("SCAN ") and line[5:] not in subqueries]


@pytest.fixture
def sqlite_history(tmp_path: Path) -> Iterator[Engine]:
    """The recipes' history in a SQLite file."""
    engine = make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    create_schema(engine)
    seed(engine)
    yield engine
    engine.dispose()


def test_no_recipe_reads_a_whole_table(sqlite_history: Engine) -> None:
    """Every recipe starts from an index (status/started_at, trace id, server id, run id...)."""
    with sqlite_history.connect() as conn:
        scans = {title: full_scans(plan(conn, sql)) for title, sql in recipes().items()}
    assert {title: lines for title, lines in scans.items() if lines} == {}


def test_history_store_queries_are_served_by_indexes(sqlite_history: Engine) -> None:
    """runs, show, stats and tail read through indexes; a filtered runs needs no sort."""
    store = HistoryStore(sqlite_history)
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(sqlite_history, "before_cursor_execute", capture)
    store.list_runs(status="failed", since=at(1, 0))
    first_runs_query = len(captured)
    store.list_runs()
    store.list_runs(server_id="srv-0002")
    store.list_runs(workflow_id="provision_srv-0002", status="failed")
    store.stats(since=at(1, 0), until=at(4, 0), by="server_ip")
    store.stats(since=at(1, 0), until=at(4, 0), by="device_type")
    store.get_run("run-4")
    store.get_run("provision_srv-0002")
    with pytest.raises(AmbiguousRunError):
        store.get_run("run-")  # a prefix of several runs: the range query
    store.active_runs()
    event.remove(sqlite_history, "before_cursor_execute", capture)
    with sqlite_history.connect() as conn:
        plans = [(statement, plan(conn, statement, params)) for statement, params in captured]
    assert [(s, lines) for s, lines in plans if full_scans(lines)] == []
    assert "USE TEMP B-TREE FOR ORDER BY" not in plans[first_runs_query - 1][1]
    assert any("ix_workflow_history_status_started_at" in "".join(p) for _, p in plans[:1])
