"""A database that accepts and never answers: bounded waits, a bounded shutdown, nothing lost.

The database hangs for real (:mod:`tests.hung_database`): PostgreSQL and MariaDB behind a
loopback relay that stops relaying, SQLite behind a write lock held by the test. A call that
has not answered within ``spool_after`` seconds counts as failed: its rows, and those that
follow, go to the spool while it hangs, so under ``durability="run"``/``"step"`` no durable
point waits for the full ``durability_timeout`` (without a spool nothing can make a point
durable: each wait is answered ``False`` at once and counted). ``shutdown(t)`` returns within
``t`` with the thread stopped and every row committed, spooled or counted in ``rows_lost``;
once the database answers again, the run lands complete — from memory, or replayed from the
spool. ``force_flush`` waits, up to its timeout, for that replay.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.history.health import WriterState
from instrumentation import workflow_run
from tests.hung_database import FreezableProxy, Hangable, hangable, refusable  # noqa: F401

STEPS = 23
DURABLE_TIMEOUT = 5.0
SPOOL_AFTER = 0.5


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def recorded(engine: sa.Engine, run_id: str) -> tuple[str | None, list[str]]:
    with engine.connect() as connection:
        status = connection.scalar(
            sa.select(workflow_history.c.status).where(workflow_history.c.run_id == run_id)
        )
        steps = connection.scalars(
            sa.select(workflow_step_history.c.status).where(
                workflow_step_history.c.run_id == run_id
            )
        ).all()
    return status, list(steps)


def workflow(provider: TracerProvider) -> str:
    with workflow_run("wf", tracer_provider=provider) as run:
        for n in range(STEPS):
            with run.step(f"s{n}"):
                pass
    return run.run_id


@pytest.fixture
def processors() -> Iterator[list[WorkflowHistorySpanProcessor]]:
    """Processors the test builds, shut down whatever its outcome."""
    made: list[WorkflowHistorySpanProcessor] = []
    yield made
    for processor in made:
        processor.shutdown(5_000)


def build(
    made: list[WorkflowHistorySpanProcessor], url: str, spool_dir: Path, **options: Any
) -> tuple[WorkflowHistorySpanProcessor, TracerProvider]:
    processor = WorkflowHistorySpanProcessor(
        make_engine(url), spool_dir=str(spool_dir), spool_after=SPOOL_AFTER, **options
    )
    made.append(processor)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    assert processor.force_flush(30_000), processor.stats  # the tables exist, a connection pooled
    return processor, provider


@pytest.mark.parametrize("spool", [True, False], ids=["spool", "no-spool"])
@pytest.mark.parametrize("durability", ["run", "step"])
def test_a_hung_database_bounds_durable_waits_and_the_run_lands_once_it_answers(
    hangable: Hangable,  # noqa: F811
    durability: str,
    spool: bool,
    tmp_path: Path,
    processors: list[WorkflowHistorySpanProcessor],
) -> None:
    """A 23-step workflow while the database hangs: with a spool no durable point times out
    (its rows are spooled once the call has hung for spool_after); without one every point is
    answered False and counted — the whole workflow takes less than one durability_timeout
    instead of one per point. Once the database answers, force_flush commits it all: the run
    is complete with its 23 steps."""
    processor, provider = build(
        processors,
        hangable.url,
        tmp_path / "spool",
        spool=spool,
        durability=durability,
        durability_timeout=DURABLE_TIMEOUT,
    )
    hangable.hang()
    started = time.monotonic()
    run_id = workflow(provider)
    took = time.monotonic() - started
    stats = processor.stats
    points = 2 + (STEPS if durability == "step" else 0)
    assert took < DURABLE_TIMEOUT, (took, stats)  # unbounded: ~points * DURABLE_TIMEOUT
    if spool:
        assert stats["durable_timeouts"] == 0, stats
        assert stats["rows_spooled"] >= 1 + STEPS, stats
        assert stats["writer_state"] == WriterState.SPOOLING.value, stats
    else:
        assert stats["durable_timeouts"] == points, stats
        assert stats["rows_spooled"] == 0, stats
    hangable.wake()
    assert processor.force_flush(60_000), processor.stats
    status, steps = recorded(processor.engine, run_id)
    assert (status, steps) == ("completed", ["completed"] * STEPS)
    assert processor.stats["writer_state"] == WriterState.HEALTHY.value


@pytest.mark.parametrize("spool", [True, False], ids=["spool", "no-spool"])
@pytest.mark.parametrize("durability", ["run", "step"])
def test_shutdown_under_a_hung_database_returns_in_time_and_accounts_for_every_row(
    hangable: Hangable,  # noqa: F811
    durability: str,
    spool: bool,
    tmp_path: Path,
    processors: list[WorkflowHistorySpanProcessor],
) -> None:
    """Durable waits that give up at once (0.2 s) leave markers behind; shutdown(3 s) still
    returns within 3 s with the writer's thread ended, the queue empty and all 24 rows either
    spooled (then replayed by the next process once the database answers: the run is
    complete) or counted in rows_lost."""
    processor, provider = build(
        processors,
        hangable.url,
        tmp_path / "spool",
        spool=spool,
        durability=durability,
        durability_timeout=0.2,
    )
    hangable.hang()
    run_id = workflow(provider)
    started = time.monotonic()
    processor.shutdown(3_000)
    took = time.monotonic() - started
    stats = processor.stats
    assert took <= 3.0 + 0.25, took  # its own bound, plus scheduling slack
    thread = processor.writer._thread
    assert thread is not None and not thread.is_alive()
    assert not processor.writer.alive
    assert stats["writer_state"] == WriterState.STOPPED.value
    assert stats["queue_depth"] == 0, stats
    if spool:
        assert stats["rows_lost"] == 0, stats
        assert stats["rows_spooled"] >= 1 + STEPS, stats
    else:
        assert stats["rows_lost"] == 1 + STEPS, stats
    hangable.wake()
    if spool:  # the next process on this database replays the spool
        successor, _ = build(processors, hangable.url, tmp_path / "spool")
        wait_for(
            lambda: recorded(successor.engine, run_id) == ("completed", ["completed"] * STEPS),
            "the spooled run to be replayed",
        )


def test_force_flush_waits_for_the_replay_once_the_database_answers(
    hangable: Hangable,  # noqa: F811
    tmp_path: Path,
    processors: list[WorkflowHistorySpanProcessor],
) -> None:
    """A first force_flush(2 s) while the database hangs spools every row at half its timeout
    and answers False; the database answers again a second after force_flush(60 s) was
    called: that flush waits for the replay and returns True, with the run complete (it used
    to return False at once)."""
    processor, provider = build(processors, hangable.url, tmp_path / "spool")
    hangable.hang()
    run_id = workflow(provider)
    assert processor.force_flush(2_000) is False
    assert processor.stats["rows_spooled"] >= 1 + STEPS, processor.stats
    waker = threading.Timer(1.0, hangable.wake)
    waker.start()
    try:
        assert processor.force_flush(60_000), processor.stats
    finally:
        waker.cancel()
        waker.join()
    assert recorded(processor.engine, run_id) == ("completed", ["completed"] * STEPS)


def test_force_flush_waits_for_the_replay_once_a_database_that_was_down_answers(
    refusable: FreezableProxy,  # noqa: F811
    tmp_path: Path,
    processors: list[WorkflowHistorySpanProcessor],
) -> None:
    """The database goes down (connections refused): every row of a workflow is spooled. It
    comes back a second after force_flush(60 s) was called: the flush waits for the replay and
    returns True with the run complete (it used to return False at once)."""
    processor, provider = build(processors, refusable.url, tmp_path / "spool")
    refusable.refuse()
    run_id = workflow(provider)
    wait_for(
        lambda: processor.stats["rows_spooled"] >= 1 + STEPS and not processor.writer.has_pending,
        "every row to be spooled",
    )
    waker = threading.Timer(1.0, refusable.wake)
    waker.start()
    try:
        assert processor.force_flush(60_000), processor.stats
    finally:
        waker.cancel()
        waker.join()
    assert recorded(processor.engine, run_id) == ("completed", ["completed"] * STEPS)


def _driver_closed(raw: Any) -> bool:
    """Whether a driver connection (psycopg, PyMySQL or sqlite3) is closed (sqlite3: only
    while no other thread uses it)."""
    if hasattr(raw, "closed"):  # psycopg
        return bool(raw.closed)
    if hasattr(raw, "open"):  # PyMySQL
        return not raw.open
    try:
        raw.execute("SELECT 1")
    except Exception:  # sqlite3.ProgrammingError: Cannot operate on a closed database
        return True
    return False


def test_the_connection_of_a_call_that_outlived_shutdown_is_closed_once_it_returns(
    hangable: Hangable,  # noqa: F811
    tmp_path: Path,
    processors: list[WorkflowHistorySpanProcessor],
) -> None:
    """shutdown(1 s) under a hung database leaves the writer's kept connection in its call and
    disposes the engine's pool; once the database answers and the call returns, that
    connection is closed, not checked into the disposed pool (where it stayed open until
    garbage collected: psycopg's "deleted while still open" warning in CI)."""
    processor, provider = build(
        processors, hangable.url, tmp_path / "spool", durability="step", durability_timeout=0.2
    )
    workflow(provider)
    assert processor.force_flush(30_000)
    kept = processor.writer._connection
    assert kept is not None
    raw = kept.connection.driver_connection
    hangable.hang()
    workflow(provider)
    processor.shutdown(1_000)
    database_thread = processor.writer.db._thread
    assert database_thread is not None and database_thread.is_alive()  # still in its call
    if not isinstance(raw, sqlite3.Connection):  # a sqlite3 one in use must not be touched
        assert not _driver_closed(raw)
    hangable.wake()
    database_thread.join(30)
    assert not database_thread.is_alive()
    assert _driver_closed(raw)
