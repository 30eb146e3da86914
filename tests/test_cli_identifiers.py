"""Tables never cut an identifier at its end, on the demo's own data, at 80, 120 and 200 columns.

A run id, workflow id, workflow name or step name is shown whole or shortened in its middle
(both ends kept: ``provision…-0234``); different values never read the same; at 120 columns
nothing of the demo is cut but the error text. One test runs ``flowtel runs`` on a real
pseudo-terminal whose window size is set with ``TIOCSWINSZ`` (``COLUMNS`` unset).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.text import Text

from exporters.cli import main
from exporters.cli._columns import Column, Role, fit_columns, shorten_middle
from exporters.cli.tail import render_frame
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.query.store import HistoryStore

from .test_cli import ROOT
from .test_queries import add, run_row

WIDTHS = (80, 120, 200)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The history `flowtel demo` records (20 runs, seed 7, three of them failing)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OTEL_TRACES_EXPORTER": "none"}
    command = [sys.executable, "-m", "exporters.cli", "demo", "--step-delay", "0", "--db", url]
    subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
    return url


def _runs(url: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(main, ["runs", "--db", url, "--json", "--limit", "1000"])
    listed: list[dict[str, Any]] = json.loads(result.output)
    return listed


def _at(width: int, *args: str) -> str:
    result = CliRunner(env={"COLUMNS": str(width)}).invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _shown_as(value: str, line: str) -> str | None:
    """The form *value* takes on *line*: itself, or its head ``…`` its tail; else None."""
    for word in line.split():
        if word == value:
            return word
        head, sep, tail = word.partition("…")
        if sep and head and tail and value.startswith(head) and value.endswith(tail):
            return word
    return None


def _check_lines(output: str, listed: list[dict[str, Any]], width: int) -> dict[str, set[str]]:
    """Each run's line shows its workflow id and step whole or middle-shortened."""
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= width, output
    forms: dict[str, set[str]] = {}
    for run in listed:
        line = next(line for line in lines if line.startswith(run["run_id"][:8]))
        for key in ("workflow_id", "current_step"):
            shown = _shown_as(run[key], line)
            assert shown is not None, (key, run[key], line)
            forms.setdefault(shown, set()).add(run[key])
    return forms


@pytest.mark.parametrize("width", WIDTHS)
def test_runs_shows_every_workflow_id_and_step_whole_or_cut_in_the_middle(
    demo_db: str, width: int
) -> None:
    """On the demo, each id and step is whole or head…tail, and distinct ones never read alike."""
    listed = _runs(demo_db)
    forms = _check_lines(_at(width, "runs", "--db", demo_db, "--limit", "1000"), listed, width)
    assert all(len(values) == 1 for values in forms.values()), forms
    failing = {run["current_step"] for run in listed if run["status"] == "failed"}
    assert len(failing) >= 2  # the demo fails at different steps: they must read differently


@pytest.mark.parametrize("width", [120, 200])
def test_runs_at_120_and_more_cuts_nothing_of_the_demo_but_the_error(
    demo_db: str, width: int
) -> None:
    """From 120 columns ids, steps and full start dates are whole; only errors end in …."""
    listed = _runs(demo_db)
    output = _at(width, "runs", "--db", demo_db, "--limit", "1000")
    for run in listed:
        line = next(line for line in output.splitlines() if line.startswith(run["run_id"][:8]))
        assert f" {run['workflow_id']} " in line, line
        assert f" {run['current_step']} " in line, line
        assert run["started_at"][:10] in line, line
        before_error = line.split(run["current_step"])[0]
        assert "…" not in before_error, line


def test_runs_on_a_real_terminal_sized_by_its_window_keeps_identifiers(demo_db: str) -> None:
    """On a pty of 80 columns (COLUMNS unset), ids and steps are whole or cut in their middle."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env |= {"PYTHONPATH": str(ROOT), "TERM": "xterm", "NO_COLOR": "1"}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    command = [sys.executable, "-m", "exporters.cli", "runs", "--db", demo_db, "--limit", "1000"]
    process = subprocess.Popen(command, stdout=follower, stderr=follower, env=env, cwd=ROOT)
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        returncode = process.wait(timeout=60)
    assert returncode == 0
    output = _ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")
    forms = _check_lines(output, _runs(demo_db), 80)
    assert all(len(values) == 1 for values in forms.values()), forms


@pytest.mark.parametrize("width", WIDTHS)
def test_show_keeps_every_step_name_whole_or_cut_in_the_middle(demo_db: str, width: int) -> None:
    """show's step table names each step whole or head…tail at every width."""
    failed = next(run for run in _runs(demo_db) if run["status"] == "failed")
    output = _at(width, "show", failed["run_id"], "--db", demo_db)
    detail = json.loads(_at(200, "show", failed["run_id"], "--db", demo_db, "--json"))
    table = output.split("Steps")[1].split("\nFailure")[0]
    assert max(len(line) for line in table.splitlines()) <= width
    for step in detail["steps"]:
        line = next(
            line for line in table.splitlines() if re.match(rf"\s*{step['step_index']}\s", line)
        )
        assert _shown_as(step["step_name"], line) is not None, (step["step_name"], line)


@pytest.mark.parametrize("width", WIDTHS)
def test_tail_keeps_workflow_ids_and_steps_whole_or_cut_in_the_middle(
    tmp_path: Path, width: int
) -> None:
    """tail's lines show each workflow id and step whole or head…tail at every width."""
    engine = make_engine(f"sqlite:///{tmp_path / 'tail.db'}")
    create_schema(engine)
    ids = [f"provision_srv-{n:04d}" for n in (11, 12, 13)]
    steps = ["verify_ipmi_reachable", "verify_bios_settings", "wait_for_commissioning"]
    add(
        engine,
        [
            run_row(
                f"run-{n}-aaaaaaaa",
                workflow_id=wid,
                status="running",
                completed_at=None,
                duration_ms=None,
                current_step=step,
                server_id=f"srv-{n:04d}",
            )
            for n, wid, step in zip((11, 12, 13), ids, steps, strict=True)
        ],
    )
    try:
        console_text = _at(width, "tail", "--once", "--db", str(engine.url))
    finally:
        engine.dispose()
    shown = set()
    for wid, step in zip(ids, steps, strict=True):
        line = next(line for line in console_text.splitlines() if _shown_as(wid, line))
        step_form = _shown_as(step, line)
        assert step_form is not None, (step, line)
        shown.add((_shown_as(wid, line), step_form))
    assert len(shown) == 3
    assert max(len(line) for line in console_text.splitlines()) <= width


@pytest.mark.parametrize(
    ("value", "width", "expected"),
    [
        ("provision_srv-0011", 18, "provision_srv-0011"),
        ("provision_srv-0011", 15, "provision…-0011"),
        ("verify_ipmi_reachable", 14, "verify_…chable"),
        ("verify_bios_settings", 14, "verify_…ttings"),
        ("abc", 1, "…"),
    ],
)
def test_shorten_middle_keeps_both_ends(value: str, width: int, expected: str) -> None:
    """A shortened value keeps its head and its last word (or half the room) around an …."""
    assert shorten_middle(value, width) == expected


def _three_columns() -> list[Column]:
    return [
        Column("id", [Text("provision_srv-0011")], Role.ID),
        Column("started", [Text("2026-12-07 10:00:00")], compact=[Text("10:00:00")]),
        Column("error", [Text("x" * 40)], Role.TEXT),
    ]


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (100, [("id", 18), ("started", 19), ("error", 40)]),  # all fits
        (60, [("id", 18), ("started", 19), ("error", 19)]),  # the error shrinks first
        (50, [("id", 18), ("started", 8), ("error", 12)]),  # then the date goes
        (25, [("id", 15), ("started", 8)]),  # then the error, and only then the id
    ],
)
def test_fit_columns_gives_up_error_then_date_then_error_column_before_an_identifier(
    width: int, expected: list[tuple[str, int]]
) -> None:
    """Order of sacrifice: error shrinks, date goes, error goes, then ids shrink."""
    shown = fit_columns(_three_columns(), width)
    assert [(c.header, c.width) for c in shown] == expected


def test_render_frame_names_the_single_workflow_in_its_heading(tmp_path: Path) -> None:
    """With one workflow running, tail names it once in the heading instead of a column."""
    engine = make_engine(f"sqlite:///{tmp_path / 'one.db'}")
    create_schema(engine)
    add(engine, [run_row("run-1", status="running", completed_at=None, workflow_name="audit")])
    console = Console(width=120, record=True)
    console.print(render_frame(HistoryStore(engine), workflow=None, limit=10, interval=None))
    engine.dispose()
    output = console.export_text()
    assert output.splitlines()[0].startswith("1 running audit")
    assert output.splitlines()[1].split()[:3] == ["run", "workflow", "id"]
