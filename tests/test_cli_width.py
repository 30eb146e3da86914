"""The command line at 80, 120 and 200 columns: the facts a reader needs stay visible at each.

Every run's line keeps its run-id prefix, its status word, its start time of day and a duration
with its unit; ``show`` says ``failed`` in words on the failed step's row (also under
``NO_COLOR``); piped output follows ``COLUMNS`` (80 without it). The run-id prefix shown is
unique among what is shown and opens that row's run. One test runs the real console script on
a pseudo-terminal.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import Engine

from exporters.cli import main
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.query.lookup import unique_prefixes

from .test_cli import FAILED_ID, OK_ID, ROOT, seed
from .test_queries import T0, add, run_row

WIDTHS = (80, 120, 200)
DURATION = re.compile(r"\b\d+(\.\d)?(ms|s)\b|\b\d+m \d\ds\b|\b\d+h \d\dm\b")


def invoke_at(width: int, *args: str, no_color: bool = False) -> Result:
    """Run flowtel in-process on a console of *width* columns (the COLUMNS variable)."""
    env = {"COLUMNS": str(width)}
    if no_color:
        env["NO_COLOR"] = "1"
    return CliRunner(env=env).invoke(main, list(args))


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite history with the failed and completed runs of test_cli."""
    url = f"sqlite:///{tmp_path / 'width.db'}"
    engine = make_engine(url)
    create_schema(engine)
    seed(engine)
    engine.dispose()
    return url


def _fits(output: str, width: int) -> None:
    too_wide = [line for line in output.splitlines() if len(line) > width]
    assert not too_wide, too_wide


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_line_keeps_id_status_time_of_day_and_duration(db: str, width: int) -> None:
    """Each run's line has its id prefix, status word, start time of day and duration + unit."""
    result = invoke_at(width, "runs", "--db", db)
    assert result.exit_code == 0, result.output
    _fits(result.output, width)
    lines = result.output.splitlines()
    failed = next(line for line in lines if FAILED_ID[:8] in line)
    ok = next(line for line in lines if OK_ID[:8] in line)
    assert ("failed" in failed, "13:00:00" in failed, "1m 30s" in failed) == (True, True, True)
    assert ("completed" in ok, "12:00:00" in ok, "1m 30s" in ok) == (True, True, True)
    assert "…" not in failed.split("1m 30s")[0][-3:]  # the duration is never cut


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_wide_console_shows_the_date_and_the_error(db: str, width: int) -> None:
    """From 120 columns the start date is shown too; at 200 the error is readable."""
    output = invoke_at(width, "runs", "--db", db).output
    assert ("2026-11-01" in output) == (width >= 120)
    if width == 200:
        assert "TimeoutError: srv-0042 still late" in output


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("no_color", [False, True])
def test_show_failed_step_row_says_failed_in_words(db: str, width: int, no_color: bool) -> None:
    """The failed step's row in show carries the word failed, also under NO_COLOR."""
    result = invoke_at(width, "show", FAILED_ID, "--db", db, no_color=no_color)
    assert result.exit_code == 0, result.output
    _fits(result.output.split("\nFailure")[0], width)
    row = next(line for line in result.output.splitlines() if re.match(r"\s*4\s+wait_", line))
    assert re.search(r"\bfailed\b", row), row
    assert "1m 08s" in row, row
    retry = [line for line in result.output.splitlines() if re.search(r"\bretrying\b", line)]
    assert retry, result.output


def test_piped_output_follows_columns_or_80(db: str) -> None:
    """A pipe is 80 columns wide without COLUMNS, COLUMNS wide with it (no fixed 200)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "exporters.cli", "runs", "--db", db]
    plain = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    wide = subprocess.run(
        command, capture_output=True, text=True, env=env | {"COLUMNS": "150"}, check=True
    )
    assert max(len(line) for line in plain.stdout.splitlines()) <= 80
    assert 80 < max(len(line) for line in wide.stdout.splitlines()) <= 150


def test_runs_on_a_real_80_column_terminal(db: str) -> None:
    """The console script on a pseudo-terminal of 80 columns keeps the key facts per line."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env |= {"PYTHONPATH": str(ROOT), "TERM": "xterm", "NO_COLOR": "1"}
    script = (
        "import fcntl, struct, sys, termios\n"
        "fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 80, 0, 0))\n"
        "from exporters.cli import main\n"
        f"main(['runs', '--db', {db!r}])\n"
    )
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=follower, stderr=follower, env=env, cwd=ROOT
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode()).replace("\r", "")
    _fits(output, 80)
    failed = next(line for line in output.splitlines() if FAILED_ID[:8] in line)
    assert ("failed" in failed, "13:00:00" in failed, "1m 30s" in failed) == (True, True, True)


def _legacy_history(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add(
        engine,
        [
            run_row("legacy-9", workflow_id="wf-9", started_at=T0),
            run_row("legacy-951", workflow_id="wf-951", started_at=T0 + dt.timedelta(minutes=1)),
            run_row("legacy-952", workflow_id="wf-952", started_at=T0 + dt.timedelta(minutes=2)),
            run_row("legacy-96", workflow_id="wf-96", started_at=T0 + dt.timedelta(minutes=3)),
        ],
    )
    engine.dispose()
    return url


def test_every_shown_run_id_opens_its_own_run(tmp_path: Path) -> None:
    """legacy-951 is not shown as legacy-9 (another run's exact id): each shown id opens its row."""
    url = _legacy_history(tmp_path)
    listed = json.loads(invoke_at(200, "runs", "--db", url, "--json").output)
    output = invoke_at(80, "runs", "--db", url).output
    for run in listed:
        mark = re.compile(rf"\s{re.escape(run['workflow_id'])}\s")
        line = next(line for line in output.splitlines() if mark.search(line))
        shown = line.split()[0]
        assert run["run_id"].startswith(shown)
        opened = json.loads(invoke_at(200, "show", shown, "--db", url, "--json").output)
        assert opened["run_id"] == run["run_id"], (shown, line)


def test_ambiguous_prefix_is_refused_with_candidates(tmp_path: Path) -> None:
    """A prefix of several runs exits 1 and lists them; an exact id wins over a prefix."""
    url = _legacy_history(tmp_path)
    result = invoke_at(80, "show", "legacy-95", "--db", url)
    assert result.exit_code == 1
    assert ("legacy-951" in result.output, "legacy-952" in result.output) == (True, True)
    exact = json.loads(invoke_at(80, "show", "legacy-9", "--db", url, "--json").output)
    assert exact["run_id"] == "legacy-9"


def test_unique_prefixes_on_every_backend(db_url: str) -> None:
    """Prefixes are at least 8 characters, unique in the database and never another exact id."""
    engine: Engine = make_engine(db_url)
    create_schema(engine)
    ids = ["legacy-9", "legacy-951", "legacy-952", "legacy-96", "abcdef01-aaaa", "abcdef01-bbbb"]
    add(engine, [run_row(i, workflow_id=f"wf-{i}") for i in [*ids, "12345678-x"]])
    with engine.connect() as conn:
        shown = unique_prefixes(conn, ids)
    engine.dispose()
    assert shown == {
        "legacy-9": "legacy-9",
        "legacy-951": "legacy-951",
        "legacy-952": "legacy-952",
        "legacy-96": "legacy-96",
        "abcdef01-aaaa": "abcdef01-a",
        "abcdef01-bbbb": "abcdef01-b",
    }


def test_finished_run_without_a_duration_never_grows(tmp_path: Path) -> None:
    """A completed run with no duration shows its completed - started, never time since start."""
    url = f"sqlite:///{tmp_path / 'finished.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add(
        engine,
        [
            run_row("done-0001", duration_ms=None, workflow_id="wf-a"),
            run_row("done-0002", duration_ms=None, completed_at=None, workflow_id="wf-b"),
        ],
    )
    engine.dispose()
    output = invoke_at(120, "runs", "--db", url).output
    first = next(line for line in output.splitlines() if "wf-a" in line)
    second = next(line for line in output.splitlines() if "wf-b" in line)
    assert "1m 30s" in first
    assert not DURATION.search(second.split("completed")[1]), second
    assert "…" not in second
    header = invoke_at(120, "show", "done-0002", "--db", url).output
    assert "so far" not in header


@pytest.mark.parametrize("width", WIDTHS)
def test_stats_fits_and_keeps_counts(db: str, width: int) -> None:
    """stats fits the width and keeps every count and the failing step's start."""
    result = invoke_at(width, "stats", "--db", db, "--since", "2026-10-01", "--by", "device_type")
    assert result.exit_code == 0, result.output
    _fits(result.output, width)
    failing = next(line for line in result.output.splitlines() if re.match(r"\s*4\s+wait_", line))
    assert re.search(r"\s1\s", failing), failing
    assert "failed 1" in result.output
