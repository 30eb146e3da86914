"""End-to-end: workflows run through the span APIs leave the right rows on every backend."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time

import pytest
import sqlalchemy as sa

from instrumentation import workflow_run
from tests.conftest import History

STEPS = [f"step_{n:02d}" for n in range(1, 24)]


class Boom(Exception):
    """A step's own error."""


def run_provisioning(fail_at: int | None = None, workflow_id: str = "provision_srv-1") -> str:
    """Run a 23-step workflow, raising Boom in step *fail_at*; return its run id."""
    with workflow_run(
        "provision_server",
        workflow_id=workflow_id,
        context={"server_id": "srv-1", "device_type": "a1_c5_large"},
        total_steps=len(STEPS),
    ) as run:
        for index, name in enumerate(STEPS, start=1):
            with run.step(name):
                if index == fail_at:
                    raise Boom(f"{name} broke")
        return run.run_id


def test_completed_run_leaves_one_row_and_23_step_rows(history: History) -> None:
    """A 23-step run is one completed row with full progress and one row per step."""
    run_id = run_provisioning()
    history.flush()
    (row,) = history.runs()
    assert (row.run_id, row.status, row.steps_completed, row.total_steps) == (
        run_id,
        "completed",
        23,
        23,
    )
    assert row.completed_at > row.started_at
    assert row.started_at.tzinfo is not None
    assert re.fullmatch("[0-9a-f]{32}", row.trace_id)
    assert (row.workflow_id, row.server_id, row.device_type) == (
        "provision_srv-1",
        "srv-1",
        "a1_c5_large",
    )
    steps = history.steps(run_id)
    assert [s.step_name for s in steps] == STEPS
    assert {s.status for s in steps} == {"completed"}
    assert [s.step_index for s in steps] == list(range(1, 24))


def test_failing_step_marks_run_failed_and_keeps_the_error(history: History) -> None:
    """Step 7 raising leaves a failed row naming step 7 and a step row with the traceback."""
    with pytest.raises(Boom):
        run_provisioning(fail_at=7)
    history.flush()
    (row,) = history.runs()
    assert (row.status, row.steps_completed, row.current_step) == ("failed", 6, STEPS[6])
    assert STEPS[6] in row.error_message and "broke" in row.error_message
    assert row.error_type == "tests.test_history.Boom"
    failed = history.steps(row.run_id)[6]
    assert (failed.step_name, failed.status, failed.error_type) == (
        STEPS[6],
        "failed",
        "tests.test_history.Boom",
    )
    assert failed.error_message == f"{STEPS[6]} broke"
    assert "Traceback" in failed.error_stacktrace and "raise Boom" in failed.error_stacktrace
    assert len(history.steps(row.run_id)) == 7
    metadata = row.metadata
    assert metadata["current_step_name"] == STEPS[6]
    assert [s["status"] for s in metadata["steps"][5:8]] == ["completed", "failed"]
    assert metadata["errors"][0]["step"] == STEPS[6]


def test_running_row_is_visible_and_advances(history: History) -> None:
    """While a run is in progress its row says running and steps_completed grows."""
    release = threading.Event()
    entered = threading.Event()

    def worker() -> None:
        with workflow_run("provision_server", total_steps=3) as run:
            with run.step("first"):
                pass
            entered.set()
            release.wait(10)
            with run.step("second"):
                pass

    thread = threading.Thread(target=worker)
    thread.start()
    assert entered.wait(5)
    rows = _poll(history, lambda rows: bool(rows) and rows[0].steps_completed == 1)
    assert (rows[0].status, rows[0].steps_completed, rows[0].completed_at) == ("running", 1, None)
    release.set()
    thread.join(10)
    history.flush()
    assert (history.runs()[0].status, history.runs()[0].steps_completed) == ("completed", 2)


def _poll(history: History, done: object, within_s: float = 10.0) -> list[object]:
    """Read the runs until *done(rows)* holds, for at most *within_s* seconds.

    A generous bound, not a speed check: on a loaded machine the writer's first batch also
    creates the tables. How fast a row becomes visible is measured by the benchmark suite's
    visibility comparison (p99 about 0.13 s), never asserted here.
    """
    deadline = time.monotonic() + within_s
    while True:
        try:
            rows = history.runs()
        except sa.exc.DBAPIError:  # the writer thread has not created the table yet
            rows = []
        if done(rows):  # type: ignore[operator]
            return rows
        if time.monotonic() >= deadline:
            pytest.fail(f"no matching row within {within_s} s: {rows}")
        time.sleep(0.02)


def test_same_workflow_id_twice_is_two_rows(history: History) -> None:
    """Re-running a workflow id makes a second row with a different run id."""
    first = run_provisioning(workflow_id="provision_srv-9")
    second = run_provisioning(workflow_id="provision_srv-9")
    history.flush()
    rows = history.runs(workflow_id="provision_srv-9")
    assert [r.run_id for r in rows] == [first, second]
    assert first != second


def test_cancelled_run_is_recorded_cancelled(history: History) -> None:
    """KeyboardInterrupt inside a step leaves the run cancelled and re-raises it."""
    with (
        pytest.raises(KeyboardInterrupt),
        workflow_run("provision_server") as run,
        run.step("wait"),
    ):
        raise KeyboardInterrupt
    history.flush()
    (row,) = history.runs()
    assert row.status == "cancelled"
    assert history.steps(row.run_id)[0].status == "failed"


def test_timestamps_are_utc_and_ordered(history: History) -> None:
    """Step times lie inside the run's times, all timezone-aware UTC."""
    run_id = run_provisioning()
    history.flush()
    (row,) = history.runs()
    steps = history.steps(run_id)
    assert row.started_at.utcoffset() == dt.timedelta(0)
    assert row.started_at <= steps[0].started_at <= steps[-1].completed_at <= row.completed_at
