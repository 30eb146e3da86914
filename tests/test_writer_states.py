"""The writer's named states, the log-line limit it honours and the rows it hands over.

The writer owns the loop and reports where it stands as one :class:`WriterState`; a step row
keeps at most ``Limits.log_lines`` log lines; a rendered run row shares no mutable list with the
writer's state (the database thread serialises it while the writer folds on).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.history.capture import ErrorInfo, RunStart, StepEnd
from exporters.history.dbthread import DatabaseThread
from exporters.history.rows import RunState
from exporters.history.writer import HistoryWriter, WriterState
from exporters.telemetry.logs import add_log_event
from instrumentation import workflow_run
from instrumentation.limits import Limits, get_limits, set_limits
from tests.conftest import _SWITCHBOARD, History

UNREACHABLE = "postgresql+psycopg://flowtel:pw@127.0.0.1:9/nowhere?connect_timeout=1"


def wait_for(check: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def three_log_lines() -> Iterator[None]:
    before = get_limits()
    set_limits(Limits(log_lines=3))
    yield
    set_limits(before)


def test_states_move_from_healthy_to_spooling_and_stop(
    tmp_path: Path, tracer_provider: TracerProvider
) -> None:
    """healthy while the database answers; retrying, then spooling, while it does not;
    stopped after shutdown, with the thread ended — each the value of one WriterState."""
    good = WorkflowHistorySpanProcessor(make_engine(f"sqlite:///{tmp_path}/h.db"))
    _SWITCHBOARD.targets.append(good)
    with workflow_run("wf") as run, run.step("s"):
        pass
    assert good.force_flush(10_000)
    assert good.stats["writer_state"] == WriterState.HEALTHY.value
    good.shutdown(5_000)
    assert_stopped(good)

    bad = WorkflowHistorySpanProcessor(make_engine(UNREACHABLE), spool_after=0.3)
    _SWITCHBOARD.targets[:] = [bad]
    seen: set[Any] = set()
    with workflow_run("wf") as run, run.step("s"):
        pass
    deadline = time.monotonic() + 10
    while WriterState.SPOOLING.value not in seen and time.monotonic() < deadline:
        seen.add(bad.stats["writer_state"])
        time.sleep(0.01)
    assert WriterState.SPOOLING.value in seen, seen
    assert seen <= {s.value for s in WriterState}
    bad.shutdown(2_000)
    assert_stopped(bad)


def assert_stopped(processor: WorkflowHistorySpanProcessor) -> None:
    """``stopped`` is reported only once the writer's thread has really ended."""
    thread = processor.writer._thread
    assert thread is not None and not thread.is_alive()
    assert not processor.writer.alive
    assert processor.stats["writer_state"] == WriterState.STOPPED.value


def test_step_logs_keep_the_configured_number_of_lines(
    history: History, three_log_lines: None
) -> None:
    """Limits(log_lines=3): ten log lines leave the newest two and a marker saying how many
    went (the writer used a hard-coded 20)."""
    with workflow_run("wf") as run, run.step("chatty"):
        for n in range(10):
            assert add_log_event("warning", f"line {n}")
    history.flush()
    (row,) = history.steps(run.run_id)
    assert len(row.logs) == 3
    assert row.logs[0]["message"] == "…[truncated 8 lines]"
    assert [line["message"] for line in row.logs[1:]] == ["line 8", "line 9"]


def test_a_rendered_row_does_not_share_the_errors_list() -> None:
    """A row handed to the database thread keeps the errors of its own snapshot, whatever the
    writer folds afterwards."""
    state = RunState("r1", None, None)
    state.apply(RunStart("r1", 1, 2, 1, 1_000, {"workflow.run_id": "r1", "workflow.name": "wf"}))

    def fail(attempt: int) -> StepEnd:
        error = ErrorInfo("OSError", f"try {attempt}", None)
        return StepEnd("r1", 10 + attempt, 2_000, 3_000, "s", 1, attempt, "failed", None, error)

    state.apply(fail(1))
    row = state.row(("server_id", "device_type"))
    errors = row["metadata"]["errors"]
    assert [e["message"] for e in errors] == ["try 1"]
    state.apply(fail(2))
    assert [e["message"] for e in row["metadata"]["errors"]] == ["try 1"]
    assert row["metadata"]["errors"] is not state.errors


def test_the_startup_call_runs_first_on_the_database_thread(tmp_path: Path) -> None:
    """``HistoryWriter(startup=...)`` runs before any other database call, on the database
    thread, and again with the next call while it raises."""
    calls: list[str] = []

    def startup() -> None:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise RuntimeError("not yet")

    writer = HistoryWriter(make_engine(f"sqlite:///{tmp_path}/h.db"), startup=startup)
    writer.start()
    try:
        wait_for(lambda: len(calls) == 2, "the startup call to be retried")
        assert set(calls) == {"flowtel-history-db"}
        assert writer.flush(10.0)
        assert len(calls) == 2
    finally:
        writer.shutdown(5.0)


def test_the_processor_hands_its_startup_call_to_the_writer(
    tmp_path: Path, tracer_provider: TracerProvider
) -> None:
    """``WorkflowHistorySpanProcessor(startup=...)``: the hook configure() can use so that its
    start-up work runs on flowtel's thread, not the caller's."""
    threads: list[str] = []
    processor = WorkflowHistorySpanProcessor(
        make_engine(f"sqlite:///{tmp_path}/h.db"),
        startup=lambda: threads.append(threading.current_thread().name),
    )
    assert processor.force_flush(10_000)
    processor.shutdown(5_000)
    assert threads == ["flowtel-history-db"]


def _cleanup_recorder() -> tuple[list[str], threading.Event, Any]:
    """A cleanup that records the thread it ran on, and an event set when it ran."""
    ran_on: list[str] = []
    ran = threading.Event()

    def cleanup() -> None:
        ran_on.append(threading.current_thread().name)
        ran.set()

    return ran_on, ran, cleanup


def test_stopping_after_an_uncollected_call_runs_the_cleanup_before_it_returns_and_once() -> None:
    """The writer's kept connection is released when the last call's outcome was never
    collected (it was left open, and garbage-collected later), before ``stop`` returns, so
    the engine disposed next finds it back."""
    db = DatabaseThread(notify=lambda: None)
    db.submit("commit", lambda: 42)
    assert db.wait(5.0)
    ran_on, ran, cleanup = _cleanup_recorder()
    db.stop(cleanup=cleanup)
    assert ran.is_set()
    time.sleep(0.1)
    assert ran_on == [threading.current_thread().name]


def test_stopping_during_a_call_runs_the_cleanup_only_once_that_call_has_returned() -> None:
    db = DatabaseThread(notify=lambda: None)
    release = threading.Event()
    db.submit("commit", release.wait)
    ran_on, ran, cleanup = _cleanup_recorder()
    db.stop(cleanup=cleanup)
    assert not ran.wait(0.3)  # the call in flight may still be using the connection
    release.set()
    assert ran.wait(5.0)
    time.sleep(0.1)
    assert ran_on == ["flowtel-history-db"]


def test_stopping_a_database_thread_that_never_ran_a_call_runs_the_cleanup_at_once() -> None:
    db = DatabaseThread(notify=lambda: None)
    ran_on, ran, cleanup = _cleanup_recorder()
    db.stop(cleanup=cleanup)
    assert ran.is_set() and ran_on == [threading.current_thread().name]
