"""Tests for ``flowtel diff`` and ``HistoryStore.diff_runs``: steps paired by name, what changed,
steps in one run only, context keys that differ, and steps slower than their usual p95."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from exporters.cli import main
from exporters.query.store import HistoryStore, RunNotFoundError
from exporters.serve.app import create_app

from .test_queries import T0, add, run_row, step_row
from .test_queries import engine as engine  # the fixture, on every backend

STEPS = ("select_machine", "setup_ipmi", "push_bios_settings")


def history(engine: Engine, *, extra_good: int = 0) -> None:
    """Run ``good`` (completed), then ``bad`` (failed at setup_ipmi after 3 attempts, slow),
    plus *extra_good* earlier completed runs for the baselines."""
    runs: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    for n in range(extra_good):
        run_id = f"base-{n:03d}"
        runs.append(run_row(run_id, started_at=T0 - dt.timedelta(hours=n + 1)))
        for index, name in enumerate(STEPS, start=1):
            steps.append(step_row(run_id, index, name, duration_ms=100 * index + n))
    runs.append(run_row("good", started_at=T0, metadata={"context_data": {
        "server_id": "srv-0001", "rack": "r1", "ipmi_password": "[REDACTED]"}}))  # fmt: skip
    for index, name in enumerate(STEPS, start=1):
        steps.append(step_row("good", index, name, duration_ms=100 * index, message="ok"))
    runs.append(run_row("bad", status="failed", started_at=T0 + dt.timedelta(hours=1),
                        duration_ms=95_000, workflow_id="provision_srv-0002",
                        metadata={"context_data": {"server_id": "srv-0002",
                                                   "ipmi_password": "[REDACTED]",
                                                   "vlan": 12}}))  # fmt: skip
    steps.append(step_row("bad", 1, "select_machine", duration_ms=100, message="ok"))
    for attempt in (1, 2, 3):
        status = "failed" if attempt == 3 else "retrying"
        steps.append(step_row("bad", 2, "setup_ipmi", attempt=attempt, status=status,
                              duration_ms=5_000, error_type="builtins.TimeoutError",
                              error_message="BMC did not answer", message=None))  # fmt: skip
    steps.append(step_row("bad", 4, "collect_logs", duration_ms=50))
    add(engine, runs, steps)


def test_diff_pairs_steps_by_name_and_reports_status_attempts_duration_and_error_changes(
    engine: Engine,
) -> None:
    history(engine)
    result = HistoryStore(engine).diff_runs("good", "bad")
    by_name = {step.step_name: step for step in result.steps}
    assert [step.step_name for step in result.steps] == [
        "select_machine", "setup_ipmi", "push_bios_settings", "collect_logs",
    ]  # fmt: skip
    ipmi = by_name["setup_ipmi"]
    assert ipmi.a is not None and ipmi.b is not None
    assert (ipmi.a.status, ipmi.b.status) == ("completed", "failed")
    assert (ipmi.a.attempts, ipmi.b.attempts) == (1, 3)
    assert ipmi.duration_change_ms == 15_000 - 200
    assert ipmi.status_changed and ipmi.attempts_changed and ipmi.error_changed
    assert ipmi.message_changed
    same = by_name["select_machine"]
    assert not same.changed and same.duration_change_ms == 0
    assert result.only_in_a == ["push_bios_settings"]
    assert result.only_in_b == ["collect_logs"]
    assert result.duration_change_ms == 95_000 - 90_000


def test_diff_lists_context_keys_that_differ_and_never_a_secret(engine: Engine) -> None:
    history(engine)
    result = HistoryStore(engine).diff_runs("good", "bad")
    changes = {change.key: (change.a, change.b) for change in result.context}
    assert changes == {"server_id": ("srv-0001", "srv-0002"), "rack": ("r1", None),
                       "vlan": (None, 12)}  # fmt: skip


def test_a_step_slower_than_its_p95_over_the_last_completed_runs_is_flagged(
    engine: Engine,
) -> None:
    history(engine, extra_good=20)
    store = HistoryStore(engine)
    baselines = store.step_baselines("provision_server")
    assert baselines["setup_ipmi"] == 218.0  # p95 (interpolated) of 200, 200, 201, ..., 219
    result = store.diff_runs("good", "bad")
    ipmi = next(step for step in result.steps if step.step_name == "setup_ipmi")
    assert ipmi.b is not None and ipmi.b.slow
    assert ipmi.a is not None and not ipmi.a.slow
    assert result.baseline_runs == 21


def test_diff_with_one_run_compares_it_with_the_last_completed_run_before_it(
    engine: Engine,
) -> None:
    history(engine, extra_good=2)
    result = HistoryStore(engine).diff_runs(None, "bad")
    assert (result.a.run_id, result.b.run_id) == ("good", "bad")


def test_diff_with_one_run_and_no_earlier_completed_run_names_the_fix(engine: Engine) -> None:
    history(engine)
    with pytest.raises(RunNotFoundError, match="name both runs"):
        HistoryStore(engine).diff_runs(None, "good")


def invoke(engine: Engine, *args: str, columns: int = 80) -> Result:
    url = engine.url.render_as_string(hide_password=False)
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(main, ["diff", *args, "--db", url])


def test_flowtel_diff_at_80_columns_shows_whole_step_names_changes_and_one_run_steps(
    engine: Engine,
) -> None:
    history(engine, extra_good=20)
    result = invoke(engine, "good", "bad")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    ipmi = next(line for line in lines if " setup_ipmi " in line)
    assert "completed → failed" in ipmi and "1 → 3" in ipmi and "15.0s*" in ipmi
    assert any("push_bios_settings" in line and "A only" in line for line in lines)
    assert any("collect_logs" in line and "B only" in line for line in lines)
    assert "  B  TimeoutError: BMC did not answer" in result.output
    assert "server_id  srv-0001 → srv-0002" in result.output
    assert "slower than the step's p95 over the last 21 completed runs" in result.output


def test_flowtel_diff_json_has_every_step_change_and_accepts_prefixes(engine: Engine) -> None:
    history(engine)
    result = invoke(engine, "good", "provision_srv-0002", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["a"]["run_id"] == "good" and data["b"]["run_id"] == "bad"
    assert [s["step_name"] for s in data["steps"]][1] == "setup_ipmi"
    assert data["steps"][1]["b"]["attempts"] == 3
    assert data["only_in_b"] == ["collect_logs"]


def test_flowtel_diff_of_an_unknown_run_is_exit_status_1_naming_it(engine: Engine) -> None:
    history(engine)
    result = invoke(engine, "good", "no-such-run")
    assert result.exit_code == 1
    assert "no-such-run" in result.output


def test_flowtel_show_marks_an_attempt_slower_than_its_step_p95_and_explains_the_mark(
    engine: Engine,
) -> None:
    history(engine, extra_good=20)
    url = engine.url.render_as_string(hide_password=False)
    result = CliRunner(env={"COLUMNS": "120"}).invoke(main, ["show", "bad", "--db", url])
    assert result.exit_code == 0, result.output
    failed = [line for line in result.output.splitlines() if "5.0s" in line]
    assert len(failed) == 3 and all("setup_ipmi" in line for line in failed)
    assert "5.0s*" in failed[2]  # the failed attempt is timed: slower than 218ms
    assert "5.0s*" not in failed[0]  # a retrying attempt is not judged
    assert "slower than the step's p95 over this workflow's last completed runs" in result.output
    good = CliRunner(env={"COLUMNS": "120"}).invoke(main, ["show", "good", "--db", url])
    assert "*" not in good.output


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    history(engine, extra_good=20)
    app = create_app(engine.url.render_as_string(hide_password=False))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.flowtel.engine.dispose()


def test_api_diff_is_flowtel_diff_json(client: TestClient, engine: Engine) -> None:
    cli = json.loads(invoke(engine, "good", "bad", "--json").output)
    answer = client.get("/api/runs/good/diff/bad")
    assert answer.status_code == 200
    assert answer.json() == cli
    last_good = client.get("/api/runs/bad/diff").json()
    assert last_good["a"]["run_id"] == "good"


def test_api_diff_of_an_unknown_run_is_404_json(client: TestClient) -> None:
    answer = client.get("/api/runs/good/diff/nope-nope")
    assert answer.status_code == 404
    assert answer.json()["error"] == "run_not_found"


def test_run_page_links_to_the_comparison_with_the_last_good_run_which_shows_the_changes(
    client: TestClient,
) -> None:
    run_page = client.get("/runs/bad")
    assert 'href="/runs/bad/compare"' in run_page.text
    compare = client.get("/runs/bad/compare")
    assert compare.status_code == 200
    text = compare.text
    assert 'data-step="setup_ipmi"' in text
    row = text[text.index('data-step="setup_ipmi"') :].split("</tr>")[0]
    assert "completed</span> → <span" in row and "failed" in row and "1 → 3" in row
    assert 'class="slow"' in row
    assert "error: none → TimeoutError: BMC did not answer" in text
    assert 'collect_logs <span class="dim">(B only)</span>' in text
    assert "<th>server_id</th><td>srv-0001 → srv-0002</td>" in text


def io_history(engine: Engine) -> None:
    """Two completed runs whose steps recorded inputs and outputs: ``select_machine`` the same in
    both, ``setup_ipmi`` given another vlan, ``push_bios_settings`` returning another profile."""
    ios = {
        "io-a": [({"rack": "r1"}, {"machine": "m7"}), ({"vlan": 12}, {"bmc": "10.30.0.7"}),
                 ({"machine": "m7"}, {"applied": "a1_default"})],
        "io-b": [({"rack": "r1"}, {"machine": "m7"}), ({"vlan": 14}, {"bmc": "10.30.0.7"}),
                 ({"machine": "m7"}, {"applied": "a1_sriov"})],
    }  # fmt: skip
    runs, steps = [], []
    for hour, (run_id, values) in enumerate(ios.items()):
        runs.append(run_row(run_id, started_at=T0 + dt.timedelta(hours=hour)))
        for index, (name, (given, returned)) in enumerate(zip(STEPS, values, strict=True), start=1):
            steps.append(step_row(run_id, index, name, input=given, output=returned))
    add(engine, runs, steps)


def test_diff_reports_the_steps_whose_recorded_input_or_output_changed(engine: Engine) -> None:
    io_history(engine)
    result = HistoryStore(engine).diff_runs("io-a", "io-b")
    by_name = {step.step_name: step for step in result.steps}
    same, ipmi, bios = (by_name[name] for name in STEPS)
    assert not same.changed and not same.input_changed and not same.output_changed
    assert ipmi.input_changed and not ipmi.output_changed and ipmi.changed
    assert ipmi.a is not None and ipmi.b is not None
    assert (ipmi.a.input, ipmi.b.input) == ({"vlan": 12}, {"vlan": 14})
    assert bios.output_changed and not bios.input_changed and bios.changed
    data = result.to_json()
    assert data["steps"][2]["b"]["output"] == {"applied": "a1_sriov"}
    assert data["steps"][2]["output_changed"] is True


def test_flowtel_diff_and_the_compare_page_show_changed_inputs_and_outputs(
    engine: Engine,
) -> None:
    io_history(engine)
    result = invoke(engine, "io-a", "io-b")
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    notes = result.output[result.output.index("What else changed") :]
    assert 'setup_ipmi: input\n  A  {"vlan": 12}\n  B  {"vlan": 14}' in notes
    assert 'push_bios_settings: output\n  A  {"applied": "a1_default"}' in notes
    assert "select_machine" not in notes
    app = create_app(engine.url.render_as_string(hide_password=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        page = client.get("/runs/io-a/diff/io-b").text
    app.state.flowtel.engine.dispose()
    after = page[page.index('data-step="push_bios_settings"') :]
    row = after.split('<tr class="detail">')[1].split("</tr>")[0]
    assert "output: <code>{&#34;applied&#34;: &#34;a1_default&#34;}</code>" in row
    assert "input:" not in row
