"""Tests for the flowtel command line: runs, show, demo, time parsing and database errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from exporters.cli import main
from exporters.cli._common import parse_when
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.ops.durations import DURATION_FORMS
from instrumentation import __version__

from .test_queries import T0, add, run_row, step_row

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql+psycopg://flowtel:s3cret-pw@127.0.0.1:1/flowtel"
FAILED_ID = "3f2a9c1e-7d1b-4c55-9a0e-2b1f0c9d8e7a"
OK_ID = "77aa0b12-0000-4000-8000-000000000001"
TRACE_URL = "https://jaeger.example/trace/0af7651916cd43dd8448eb211c80319c"
STACK = 'Traceback (most recent call last):\n  File "demo.py", line 9, in wait\nTimeoutError: late'


def invoke(*args: str) -> Result:
    """Run flowtel in-process with *args* (on a 200-column console whatever the terminal)."""
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, list(args))


def flowtel_process(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m exporters.cli`` in a child process (keeps configure()'s globals out)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLOWTEL_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "exporters.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    """URL of a SQLite history with one failed run (with steps) and one completed run."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    create_schema(engine)
    seed(engine)
    engine.dispose()
    return url


def seed(engine: Engine) -> None:
    """Insert a failed run of srv-0042 (newest) and a completed run of srv-0001."""
    failed = run_row(
        FAILED_ID,
        workflow_id="provision_srv-0042",
        server_id="srv-0042",
        status="failed",
        started_at=T0 + dt.timedelta(hours=1),
        completed_at=T0 + dt.timedelta(hours=1, seconds=90),
        steps_completed=3,
        current_step="wait_for_commissioning",
        error_type="TimeoutError",
        error_message="step 'wait_for_commissioning' failed: TimeoutError: srv-0042 still late",
        host="worker-7",
        pid=4242,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        metadata={
            "context_data": {"server_id": "srv-0042", "ipmi_password": "[REDACTED]"},
            "trace": {"url": TRACE_URL},
        },
    )
    start = T0 + dt.timedelta(hours=1)

    def timed(at_s: float, ms: int) -> dict[str, Any]:
        begin = start + dt.timedelta(seconds=at_s)
        end = begin + dt.timedelta(milliseconds=ms)
        return {"started_at": begin, "completed_at": end, "duration_ms": ms}

    steps = [
        step_row(FAILED_ID, 1, "select_machine", **timed(0, 2000)),
        step_row(FAILED_ID, 2, "a", status="skipped", **timed(2, 0)),
        step_row(FAILED_ID, 3, "b", status="retrying", **timed(2, 10_000)),
        step_row(FAILED_ID, 3, "b", attempt=2, **timed(12, 10_000)),
        step_row(
            FAILED_ID,
            4,
            "wait_for_commissioning",
            status="failed",
            message="TimeoutError: srv-0042 still late",
            error_type="TimeoutError",
            error_message="srv-0042 still late",
            error_stacktrace=STACK,
            logs=[
                {
                    "at": "2026-11-01T13:00:04.000000Z",
                    "severity": "WARNING",
                    "logger": "flowtel.demo",
                    "message": "commissioning is slow [srv-0042]",
                }
            ],
            **timed(22, 68_000),
        ),
    ]
    add(engine, [failed, run_row(OK_ID)], steps)


def test_version_prints_the_package_version() -> None:
    """--version names flowtel and its version."""
    result = invoke("--version")
    assert (result.exit_code, result.output.strip()) == (0, f"flowtel, version {__version__}")


def test_runs_table_lists_short_ids_newest_first(db: str) -> None:
    """The table shows 8-character run ids, newest first, with progress."""
    result = invoke("runs", "--db", db)
    assert result.exit_code == 0, result.output
    assert result.output.index(FAILED_ID[:8]) < result.output.index(OK_ID[:8])
    assert FAILED_ID not in result.output
    assert "3/23" in result.output


def test_runs_table_shows_the_error_without_the_step_prefix(db: str) -> None:
    """The error column shows the exception, not the repeated step name."""
    result = invoke("runs", "--db", db)
    assert "TimeoutError: srv-0042 still late" in result.output
    assert "failed: TimeoutError" not in result.output


def test_runs_json_is_an_array_with_stable_keys(db: str) -> None:
    """--json prints one object per run with the documented keys."""
    data = json.loads(invoke("runs", "--db", db, "--json").stdout)
    assert [run["run_id"] for run in data] == [FAILED_ID, OK_ID]
    assert list(data[0])[:4] == ["run_id", "workflow_name", "workflow_id", "status"]
    assert data[0]["started_at"] == "2026-11-01T13:00:00.000000Z"


def test_runs_json_carries_the_same_facts_as_the_table(db: str) -> None:
    """Each run of --json is a row of the table: id, status, progress, step and error."""
    table = invoke("runs", "--db", db).output.splitlines()
    for run in json.loads(invoke("runs", "--db", db, "--json").stdout):
        row = next(line for line in table if run["run_id"][:8] in line)
        progress = f"{run['steps_completed']}/{run['total_steps']}"
        error = (run["error_message"] or "").split("failed: ")[-1]
        facts = [run["status"], progress, run["current_step"], error]
        shown = [fact for fact in facts if fact]  # a run with no step or error shows neither
        assert len(shown) >= 2 and all(fact in row for fact in shown), (shown, row)


def test_runs_status_filter(db: str) -> None:
    """--status failed keeps only failed runs."""
    data = json.loads(invoke("runs", "--db", db, "--status", "failed", "--json").stdout)
    assert [run["run_id"] for run in data] == [FAILED_ID]


def test_runs_server_filter(db: str) -> None:
    """--server keeps only that server's runs."""
    data = json.loads(invoke("runs", "--db", db, "--server", "srv-0001", "--json").stdout)
    assert [run["run_id"] for run in data] == [OK_ID]


def test_runs_since_duration_is_relative_to_now(tmp_path: Path) -> None:
    """--since 1h keeps runs started within the last hour."""
    url = f"sqlite:///{tmp_path / 'recent.db'}"
    engine = make_engine(url)
    create_schema(engine)
    now = dt.datetime.now(dt.UTC)
    add(
        engine,
        [
            run_row("old-run", started_at=now - dt.timedelta(hours=3)),
            run_row("new-run", started_at=now - dt.timedelta(minutes=10)),
        ],
    )
    engine.dispose()
    data = json.loads(invoke("runs", "--db", url, "--since", "1h", "--json").stdout)
    assert [run["run_id"] for run in data] == ["new-run"]


def test_runs_bad_since_is_a_bad_parameter_with_an_example(db: str) -> None:
    """An unparseable --since is a usage error that shows the accepted forms."""
    result = invoke("runs", "--db", db, "--since", "yesterday")
    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.output
    assert DURATION_FORMS in " ".join(result.output.split())
    assert "2026-11-01" in result.output


def test_runs_on_missing_sqlite_file_exits_3_and_creates_nothing(tmp_path: Path) -> None:
    """No database yet: exit 3 naming `flowtel db upgrade`, and no file created."""
    path = tmp_path / "none.db"
    result = invoke("runs", "--db", f"sqlite:///{path}")
    assert (result.exit_code, "flowtel db upgrade" in result.output, path.exists()) == (
        3,
        True,
        False,
    )


def test_runs_on_database_without_tables_exits_3(tmp_path: Path) -> None:
    """A database without flowtel's tables is not a history: exit 3 naming the fix."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    make_engine(url).connect().close()
    result = invoke("runs", "--db", url)
    assert (result.exit_code, "no flowtel history tables" in result.output) == (3, True)


def test_runs_without_matches_says_so(db: str) -> None:
    """Filters that match nothing say so rather than suggesting the demo."""
    result = invoke("runs", "--db", db, "--workflow", "decommission_server")
    assert (result.exit_code, result.output.strip()) == (0, "No runs match these filters.")


def test_show_prints_header_context_and_steps(db: str) -> None:
    """show prints ids, host/pid, the redacted context and every step."""
    result = invoke("show", FAILED_ID[:8], "--db", db)
    assert result.exit_code == 0, result.output
    for expected in (FAILED_ID, "provision_srv-0042", "worker-7 / 4242", "[REDACTED]"):
        assert expected in result.output
    assert "0af7651916cd43dd8448eb211c80319c" in result.output
    assert all(name in result.output for name in ("select_machine", "wait_for_commissioning"))


def test_show_failed_run_prints_error_stack_trace_and_logs(db: str) -> None:
    """A failed run shows the failing step's error type, message, stack trace and log lines."""
    result = invoke("show", FAILED_ID, "--db", db)
    assert "step 4 wait_for_commissioning (attempt 1)" in result.output
    assert "TimeoutError: srv-0042 still late" in result.output
    assert 'File "demo.py", line 9, in wait' in result.output
    assert "WARNING flowtel.demo: commissioning is slow [srv-0042]" in result.output


def test_show_waterfall_marks_retries_and_skipped_steps(db: str) -> None:
    """Each attempt has its own row, retries marked ↻ and skipped steps ○, bars to scale."""
    lines = invoke("show", FAILED_ID, "--db", db).output.splitlines()

    def bar(word: str) -> tuple[int, int]:
        line = next(line for line in lines if word in line and "█" in line)
        return line.index("█"), line.count("█")  # where the bar starts, how long it is

    assert "○" in next(line for line in lines if " skipped " in line)
    first, retry, second, failing = (
        bar("select_machine"),
        bar("retrying"),
        bar("↻2"),
        bar("failed "),
    )
    assert first[0] < retry[0] < second[0] < failing[0]  # each starts later
    assert first[1] < retry[1] == second[1] < failing[1]  # 2 s, 10 s, 10 s, 68 s of 90 s


def test_show_prints_the_trace_link(db: str) -> None:
    """The trace link from metadata.trace.url is in the header and after the failure."""
    assert invoke("show", FAILED_ID, "--db", db).output.count(TRACE_URL) == 2


def test_show_json_carries_the_same_facts_as_the_table(db: str) -> None:
    """Everything the failure section prints is in --json, and the other way round."""
    table = invoke("show", FAILED_ID, "--db", db).output
    data = json.loads(invoke("show", FAILED_ID, "--db", db, "--json").stdout)
    failed = data["failed_step"]
    facts = [
        data["run_id"], data["workflow_id"], data["status"], data["trace_url"], data["host"],
        failed["step_name"], failed["error_type"], failed["error_message"],
        *failed["error_stacktrace"].splitlines(), failed["logs"][0]["message"],
        *(f"{k}  " for k in data["metadata"]["context_data"]),
    ]  # fmt: skip
    assert [fact for fact in facts if str(fact) not in table] == []


def test_runs_device_type_filter(db: str) -> None:
    """--device-type keeps only runs about that device type."""
    data = json.loads(invoke("runs", "--db", db, "--device-type", "s2_c2_small", "--json").stdout)
    assert len(data) == 2
    assert json.loads(invoke("runs", "--db", db, "--device-type", "none", "--json").stdout) == []


def test_show_by_workflow_id_notes_the_other_runs(tmp_path: Path) -> None:
    """A workflow id shows its latest run and how many other runs it has."""
    url = f"sqlite:///{tmp_path / 'reruns.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add(engine, [run_row("first-run", started_at=T0), run_row("second-run")])
    engine.dispose()
    result = invoke("show", "provision_srv-0001", "--db", url)
    assert "1 other run: flowtel runs --workflow-id provision_srv-0001" in result.output


def test_show_json_parses_with_steps(db: str) -> None:
    """show --json prints the run with its steps in order."""
    data = json.loads(invoke("show", FAILED_ID, "--db", db, "--json").stdout)
    steps = [(s["step_index"], s["attempt"]) for s in data["steps"]]
    assert (data["run_id"], steps) == (FAILED_ID, [(1, 1), (2, 1), (3, 1), (3, 2), (4, 1)])


def test_show_unknown_run_exits_1_with_a_suggestion(db: str) -> None:
    """An unknown reference exits 1 and names the closest workflow id."""
    result = invoke("show", "provision_srv-0043", "--db", db)
    assert result.exit_code == 1
    assert "did you mean 'provision_srv-0042'?" in result.output
    assert "Traceback" not in result.output


def test_show_ambiguous_prefix_exits_1(tmp_path: Path) -> None:
    """A prefix of two run ids exits 1 and lists them."""
    url = f"sqlite:///{tmp_path / 'twins.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add(engine, [run_row("abcd-1111"), run_row("abcd-2222")])
    engine.dispose()
    result = invoke("show", "abcd", "--db", url)
    assert (result.exit_code, "abcd-1111" in result.output, "abcd-2222" in result.output) == (
        1,
        True,
        True,
    )


def test_show_on_missing_database_exits_3(tmp_path: Path) -> None:
    """show on a database file that does not exist exits 3 naming the fix."""
    result = invoke("show", "abcd1234", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert (result.exit_code, "flowtel db upgrade" in result.output) == (3, True)


@pytest.mark.parametrize("command", [["runs"], ["show", "abcd1234"], ["stats"], ["tail"]])
def test_unreachable_database_exits_3_without_the_password(command: list[str]) -> None:
    """A database that refuses connections is one masked-URL line and exit status 3."""
    result = invoke(*command, "--db", UNREACHABLE)
    assert result.exit_code == 3
    assert "postgresql+psycopg://flowtel:***@127.0.0.1:1/flowtel" in result.output
    assert "s3cret-pw" not in result.output
    assert "Traceback" not in result.output


def test_unparseable_database_url_exits_2() -> None:
    """A URL SQLAlchemy cannot parse exits 2 with an example URL."""
    result = invoke("runs", "--db", "not a url")
    assert (result.exit_code, "sqlite:///flowtel.db" in result.output) == (2, True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", T0 - dt.timedelta(hours=24)),
        ("2026-10-01", dt.datetime(2026, 10, 1, tzinfo=dt.UTC)),
        (" 2026-10-01T08:00 ", dt.datetime(2026, 10, 1, 8, tzinfo=dt.UTC)),
        ("2026-10-01T08:00+02:00", dt.datetime(2026, 10, 1, 6, tzinfo=dt.UTC)),
        ("20261001", dt.datetime(2026, 10, 1, tzinfo=dt.UTC)),
    ],
)
def test_parse_when(text: str, expected: dt.datetime) -> None:
    """Durations count back from now (all forms: test_durations); dates are UTC by default."""
    assert parse_when(text, now=T0) == expected


def test_parse_when_rejects_other_text() -> None:
    """Anything else is a ValueError."""
    with pytest.raises(ValueError):
        parse_when("last tuesday", now=T0)


def demo_json(*args: str) -> dict[str, Any]:
    """Run ``flowtel demo --json`` in a child process and return its summary."""
    done = flowtel_process("demo", "--step-delay", "0", "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_demo_records_the_requested_runs(tmp_path: Path) -> None:
    """flowtel demo --runs 5 leaves five runs that flowtel runs lists."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    summary = demo_json("--runs", "5", "--db", url)
    runs = json.loads(invoke("runs", "--db", url, "--json").stdout)
    assert (summary["runs"], summary["flushed"], len(runs)) == (5, True, 5)
    assert {run["total_steps"] for run in runs} == {23}


def test_demo_failed_run_shows_step_error_stack_trace_and_log_line(tmp_path: Path) -> None:
    """On the demo's database, show prints the failing step, the exception type and message,
    the stack trace and the warning the step logged (stdlib logging → the step row's logs)."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    summary = demo_json("--runs", "3", "--failure-rate", "1", "--db", url)
    assert summary["failed"] == 3
    run_id = summary["failed_run_ids"][0]
    output = invoke("show", run_id, "--db", url).output
    failed = json.loads(invoke("show", run_id, "--db", url, "--json").stdout)["failed_step"]
    assert f"step {failed['step_index']} {failed['step_name']} (attempt" in output
    short_type = failed["error_type"].rsplit(".", 1)[-1]
    assert f"{failed['error_type']}: {failed['error_message']}" in output
    assert f"{short_type}: {failed['error_message']}" in failed["error_stacktrace"]
    assert "Traceback (most recent call last)" in output
    assert [line["severity"] for line in failed["logs"]] == ["warning"]
    assert f"WARNING flowtel.demo: {failed['step_name']} failed on" in output
    assert "[REDACTED]" in output


def test_demo_on_unreachable_database_exits_3(tmp_path: Path) -> None:
    """The demo refuses to start on a database it cannot reach, without leaking the password."""
    done = flowtel_process("demo", "--runs", "1", "--db", UNREACHABLE)
    assert done.returncode == 3
    assert "flowtel:***@127.0.0.1:1" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
