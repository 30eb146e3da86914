"""Tests for ``flowtel tail`` and ``HistoryStore.active_runs``: one frame, refreshes, Ctrl-C."""

from __future__ import annotations

import datetime as dt
import os
import re
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from exporters.cli import main
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.query.store import HistoryStore
from tests.spawn import spawn

from .test_cli import ROOT, UNREACHABLE, invoke
from .test_queries import T0, add, run_row


def active(run_id: str, minutes_ago: int, **values: object) -> dict[str, object]:
    """A running run that started *minutes_ago* and was last written five seconds ago."""
    now = dt.datetime.now(dt.UTC)
    row = {
        "status": "running",
        "started_at": now - dt.timedelta(minutes=minutes_ago),
        "updated_at": now - dt.timedelta(seconds=5),
        "completed_at": None,
        "duration_ms": None,
        "steps_completed": 17,
        "current_step": "push_bios_settings",
    }
    return run_row(run_id, **{**row, **values})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite history with two running runs, a pending one and two that ended."""
    engine = make_engine(f"sqlite:///{tmp_path / 'tail.db'}")
    create_schema(engine)
    add(
        engine,
        [
            active("run-old", 30, workflow_id="provision_srv-0001"),
            active("run-new", 3, workflow_id="provision_srv-0002", steps_completed=2,
                   current_step="commission_machine"),
            active("run-queued", 1, status="pending", workflow_name="rack_audit"),
            active("run-stale", 90, updated_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=45)),
            run_row("run-done", started_at=T0),
            run_row("run-failed", started_at=T0, status="failed"),
        ],
    )  # fmt: skip
    yield engine
    engine.dispose()


def test_active_runs_are_pending_or_running_newest_first(engine: Engine) -> None:
    """Ended runs are left out; the most recently started comes first."""
    runs = HistoryStore(engine).active_runs()
    assert [r.run_id for r in runs] == ["run-queued", "run-new", "run-old", "run-stale"]
    assert (runs[1].current_step, runs[1].steps_completed) == ("commission_machine", 2)


def test_active_runs_filter_by_workflow_and_limit(engine: Engine) -> None:
    """The workflow filter and the limit apply."""
    store = HistoryStore(engine)
    assert [r.run_id for r in store.active_runs(workflow="rack_audit")] == ["run-queued"]
    assert len(store.active_runs(limit=2)) == 2
    with pytest.raises(ValueError, match="limit"):
        store.active_runs(limit=0)


def test_once_prints_one_frame_with_step_progress_and_age(engine: Engine) -> None:
    """--once: each active run with its current step, progress, age and last write."""
    result = invoke("tail", "--once", "--db", str(engine.url))
    assert result.exit_code == 0, result.output
    assert "4 running" in result.output
    line = next(x for x in result.output.splitlines() if "run-old " in x)
    assert "push_bios_settings" in line
    assert "17/23" in line
    assert re.search(r"3[01]m \d\ds +\d+s ago", line)  # age, then the last write
    stale = next(x for x in result.output.splitlines() if "run-stal" in x)
    assert re.search(r"4[56]m \d\ds ago", stale)
    assert "run-done" not in result.output
    assert "Ctrl-C" not in result.output  # a single frame does not promise refreshes


def test_once_without_running_workflows_says_so(tmp_path: Path) -> None:
    """Nothing running: one line that says so."""
    url = f"sqlite:///{tmp_path / 'idle.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add(engine, [run_row("run-done")])
    engine.dispose()
    result = invoke("tail", "--once", "--db", url)
    assert (result.exit_code, "No workflow is running." in result.output) == (0, True)


def test_tail_on_missing_database_exits_3_naming_the_fix(tmp_path: Path) -> None:
    """No database file: one line naming `flowtel db upgrade`, exit 3, even without --once."""
    result = invoke("tail", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert (result.exit_code, "flowtel db upgrade" in result.output) == (3, True)


def test_tail_unreachable_database_exits_3_without_the_password() -> None:
    """An unreachable database is one masked-URL line and exit status 3."""
    result = invoke("tail", "--once", "--db", UNREACHABLE)
    assert (result.exit_code, "s3cret-pw" in result.output) == (3, False)
    assert "flowtel:***@127.0.0.1:1" in result.output


def test_ctrl_c_ends_the_live_view_with_status_0(engine: Engine) -> None:
    """SIGINT while refreshing: exit status 0, no traceback, frames printed until then."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = spawn(
        [sys.executable, "-m", "exporters.cli", "tail", "--interval", "0.1", "--db",
         str(engine.url)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    assert child.stdout is not None
    frames = 0
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        while frames < 2 and selector.select(timeout=30):  # two frames: it is refreshing
            frames += "4 running" in child.stdout.readline()
    child.send_signal(signal.SIGINT)
    try:
        _, stderr = child.communicate(timeout=30)
    finally:
        child.kill()
    assert (frames, child.returncode) == (2, 0)
    assert "Traceback" not in stderr
    assert "Aborted" not in stderr


@pytest.mark.parametrize("width", [80, 120, 200])
def test_frame_keeps_id_status_progress_and_ages_at_every_width(engine: Engine, width: int) -> None:
    """Each active run's line has its id, status, progress count, age and last write."""
    url = str(engine.url)
    result = CliRunner(env={"COLUMNS": str(width)}).invoke(main, ["tail", "--once", "--db", url])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= width
    line = next(line for line in result.output.splitlines() if "run-old" in line)
    assert ("running" in line, "17/23" in line) == (True, True)
    assert re.search(r"\b30m 0\ds\b", line), line
    assert re.search(r"\b\d+s ago\b", line), line
