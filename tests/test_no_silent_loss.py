"""No silent loss: a full queue keeps every run's end and counts the rest, and a run whose
events were lost stops beating so that ``flowtel reap`` can close it.

The application's thread never blocks and never does I/O for flowtel: past a high-water mark it
wakes the writer (which spills to the spool), and past the cap it only counts. Tests that need
the writer *not* to run while the test thread produces events raise the interpreter's switch
interval, so the producing thread keeps the GIL until it blocks.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, create_schema, make_engine, reap
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.spool.files import spool_key
from exporters.spool.replay import Replayer
from exporters.telemetry.metrics import LOST, observe_writer
from instrumentation import workflow_run

UNREACHABLE = "postgresql+psycopg://flowtel:pw@127.0.0.1:9/nowhere?connect_timeout=1"


def wait_for(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def run_row(engine: sa.Engine, run_id: str) -> Any:
    with engine.connect() as connection:
        query = sa.select(workflow_history).where(workflow_history.c.run_id == run_id)
        return connection.execute(query).one_or_none()


@pytest.fixture
def hog_the_gil() -> Iterator[None]:
    """The test thread keeps the GIL until it blocks (the writer cannot drain meanwhile)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    yield
    sys.setswitchinterval(before)


def own_provider(processor: WorkflowHistorySpanProcessor) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider


def test_a_full_queue_never_drops_a_run_end(
    db_url: str, hog_the_gil: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Review A.2: a queue of 10, a writer asleep, one run of 20 steps. Step events are dropped
    and counted; the run's end is kept, so the run ends `completed`, not a zombie `running`."""
    engine = make_engine(db_url)
    processor = WorkflowHistorySpanProcessor(
        engine, max_queue_size=10, flush_interval=30, heartbeat_interval=0.2, spool=False
    )
    provider = own_provider(processor)
    assert processor.force_flush(10_000)
    time.sleep(0.2)  # the writer sleeps now
    try:
        with workflow_run("wf", tracer_provider=provider) as run:
            for n in range(20):
                with run.step(f"s{n}"):
                    pass
        assert processor.force_flush(10_000) is not None
        stats = processor.stats
        assert stats["events_dropped"] > 0, stats
        assert stats["active_runs"] == 0, stats
        assert run_row(engine, run.run_id).status == "completed"
        dropped = [r for r in caplog.records if "events dropped so far" in r.getMessage()]
        assert dropped and dropped[0].threadName == "flowtel-history-writer"
        assert dropped[0].levelno == logging.ERROR
    finally:
        processor.shutdown(5_000)
        engine.dispose()


def test_a_run_that_lost_events_stops_beating_and_can_be_reaped(
    db_url: str, hog_the_gil: None
) -> None:
    """An open run whose step events were dropped is no longer heart-beaten: `reap` marks it
    `abandoned`, and its end, arriving later, still wins."""
    engine = make_engine(db_url)
    processor = WorkflowHistorySpanProcessor(
        engine, max_queue_size=6, heartbeat_interval=0.1, spool=False
    )
    provider = own_provider(processor)
    assert processor.force_flush(10_000)
    release, opened = threading.Event(), threading.Event()
    run_id: list[str] = []

    def hold() -> None:
        with workflow_run("long", tracer_provider=provider) as run:
            run_id.append(run.run_id)
            for n in range(10):  # 21 events into a queue of 6, the writer asleep
                with run.step(f"s{n}"):
                    pass
            opened.set()
            release.wait(60)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert opened.wait(30)
        sys.setswitchinterval(0.005)
        assert processor.force_flush(10_000) is not None
        assert processor.stats["events_dropped"] > 0
        assert run_row(engine, run_id[0]).status == "running"
        beats = processor.stats["heartbeats"]
        time.sleep(1.5)  # fifteen heartbeat intervals
        assert processor.stats["heartbeats"] == beats, "the run that lost events still beats"
        reaped = reap(engine, older_than=1.0)
        assert [r.run_id for r in reaped] == run_id
        assert run_row(engine, run_id[0]).status == "abandoned"
        release.set()
        thread.join()
        assert processor.force_flush(10_000) is not None
        wait_for(lambda: run_row(engine, run_id[0]).status == "completed", "its end to win")
    finally:
        release.set()
        thread.join()
        processor.shutdown(5_000)
        engine.dispose()


def test_the_writer_wakes_at_the_high_water_mark(tmp_path: Path) -> None:
    """With a 30 s flush interval the writer still drains a filling queue (woken at 90 % of the
    cap), so a steady stream past the cap loses nothing."""
    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)
    processor = WorkflowHistorySpanProcessor(
        engine, max_queue_size=1_000, flush_interval=30, spool_dir=str(tmp_path / "spool")
    )
    provider = own_provider(processor)
    assert processor.force_flush(10_000)
    time.sleep(0.2)  # the writer sleeps now
    for n in range(300):  # 2,400 events
        with workflow_run("wf", workflow_id=f"wf-{n}", tracer_provider=provider) as run:
            for name in "abc":
                with run.step(name):
                    pass
        time.sleep(0.001)
    try:
        assert processor.stats["events_dropped"] == 0, processor.stats
        assert processor.force_flush(30_000), processor.stats
        with engine.connect() as connection:
            query = sa.select(sa.func.count()).where(workflow_history.c.status == "completed")
            assert connection.execute(query).scalar() == 300
    finally:
        processor.shutdown(5_000)
        engine.dispose()


def five_workflows(provider: TracerProvider) -> None:
    for n in range(5):
        with workflow_run("wf", workflow_id=f"wf-{n}", tracer_provider=provider) as run:
            for name in "abc":
                with run.step(name):
                    pass


def test_an_unwritable_spool_falls_back_to_a_private_temp_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Database down and a file where the spool should be: the rows go to
    <tmp>/flowtel-<uid>/spool/<key> (0700 all the way), from which they replay."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file in the way")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    caplog.set_level(logging.WARNING, logger="flowtel")
    processor = WorkflowHistorySpanProcessor(
        make_engine(UNREACHABLE), spool_dir=str(blocked), spool_after=0.1
    )
    five_workflows(own_provider(processor))
    processor.shutdown(5_000)
    stats = processor.stats
    assert stats["rows_lost"] == 0 and stats["spool_errors"] > 0, stats
    assert stats["rows_spooled"] >= 20, stats
    base = tmp_path / "tmp" / f"flowtel-{os.geteuid()}"
    fallback = base / "spool" / spool_key(UNREACHABLE)
    for directory in (base, base / "spool", fallback):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert any(str(fallback) in r.getMessage() for r in caplog.records if r.levelname == "ERROR")

    engine = make_engine(f"sqlite:///{tmp_path}/replayed.db")
    create_schema(engine)
    replayer = Replayer(fallback, spool_key(UNREACHABLE))
    while replayer.replay_chunk(engine):
        pass
    with engine.connect() as connection:
        runs = connection.execute(sa.select(workflow_history.c.status)).scalars().all()
        steps = connection.scalar(sa.select(sa.func.count()).select_from(workflow_step_history))
    assert (sorted(runs), steps) == (["completed"] * 5, 15)
    engine.dispose()


def test_rows_neither_committed_nor_spooled_are_counted_and_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Database down, spool and fallback both unwritable: shutdown counts the 20 rows it loses
    (stats, the `lost` metric), logs at ERROR when spooling fails and again with totals."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    blocked = tmp_path / "blocked"
    blocked.write_text("a file in the way")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    caplog.set_level(logging.WARNING, logger="flowtel")
    processor = WorkflowHistorySpanProcessor(
        make_engine(UNREACHABLE), spool_dir=str(blocked), spool_after=0.1
    )
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    observe_writer(meters.get_meter("flowtel"), lambda: processor.stats)
    five_workflows(own_provider(processor))
    wait_for(lambda: processor.stats["spool_errors"] > 0, "a failed spool attempt")
    processor.shutdown(5_000)
    stats = processor.stats
    assert stats["rows_lost"] == 20, stats  # 5 run rows and 15 step rows
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("cannot spool workflow history" in m for m in errors), errors
    assert any("lost 5 run rows and 15 step rows" in m for m in errors), errors
    assert any("20 rows neither committed nor spooled" in m for m in errors), errors
    data = reader.get_metrics_data()
    points = {
        p.attributes["reason"]: p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == LOST
        for p in metric.data.data_points
    }
    assert points == {
        "queue_full": 0, "memory_cap": 0, "unwritten_at_shutdown": 20, "rejected_input": 0,
    }  # fmt: skip
    meters.shutdown()


def step_rows(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.scalars(sa.select(workflow_step_history.c.status)).all())


def test_past_the_queue_cap_step_events_are_spooled_on_the_callers_thread_not_dropped(
    db_url: str, hog_the_gil: None
) -> None:
    """A queue of 200, the producing thread holding the GIL: 100 runs of 3 steps (800 events).
    Nothing is dropped — what does not fit goes to the spool on the caller's thread
    (events_overflowed) — and force_flush, True, returns once it is all committed: 100 runs
    completed, 300 step rows completed."""
    engine = make_engine(db_url)
    processor = WorkflowHistorySpanProcessor(engine, max_queue_size=200, max_batch_size=50)
    provider = own_provider(processor)
    assert processor.force_flush(10_000)
    try:
        for n in range(100):
            with workflow_run("wf", workflow_id=f"wf-{n}", tracer_provider=provider) as run:
                for name in "abc":
                    with run.step(name):
                        pass
        sys.setswitchinterval(0.005)
        assert processor.force_flush(60_000), processor.stats
        stats = processor.stats
        assert stats["events_dropped"] == 0, stats
        assert stats["events_overflowed"] > 0, stats
        with engine.connect() as connection:
            query = sa.select(sa.func.count()).where(workflow_history.c.status == "completed")
            assert connection.execute(query).scalar() == 100
        assert step_rows(engine) == ["completed"] * 300
    finally:
        processor.shutdown(5_000)
        engine.dispose()


def test_a_flush_that_knows_of_dropped_events_answers_false(
    tmp_path: Path, hog_the_gil: None
) -> None:
    """No spool and a queue of 10: step events are dropped (put() returns False for them) and
    the next force_flush answers False although every queued row committed; the flush after
    it, with nothing dropped meanwhile, answers True."""
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    processor = WorkflowHistorySpanProcessor(
        engine, max_queue_size=10, flush_interval=30, spool=False
    )
    provider = own_provider(processor)
    assert processor.force_flush(10_000)
    time.sleep(0.2)  # the writer sleeps now
    try:
        with workflow_run("wf", tracer_provider=provider) as run:
            for n in range(20):
                with run.step(f"s{n}"):
                    pass
        assert processor.stats["events_dropped"] > 0
        assert processor.writer.put((1, run.run_id, "late", 99, 1, 12345, 0)) is False
        sys.setswitchinterval(0.005)
        assert processor.force_flush(10_000) is False
        assert run_row(engine, run.run_id).status == "completed"
        assert processor.force_flush(10_000) is True
    finally:
        processor.shutdown(5_000)
        engine.dispose()


def test_a_spool_that_failed_is_tried_again_before_step_rows_are_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database down, spool and fallback blocked by files, at most 10 step rows in memory:
    the first outage drops step rows past the cap (counted). Once the files are gone — space
    is back — the next rows go to the spool: not one more step row is dropped."""
    blocked = tmp_path / "blocked"
    blocked.write_text("a file in the way")
    fallback = tmp_path / "tmp"
    fallback.write_text("a file in the way too")
    monkeypatch.setattr(tempfile, "tempdir", str(fallback))
    processor = WorkflowHistorySpanProcessor(
        make_engine(UNREACHABLE), spool_dir=str(blocked), spool_after=0.1, max_pending_steps=10
    )
    provider = own_provider(processor)
    try:
        five_workflows(provider)  # 15 step rows
        wait_for(lambda: processor.stats["steps_dropped"] > 0, "step rows dropped past the cap")
        dropped = processor.stats["steps_dropped"]
        blocked.unlink()
        fallback.unlink()
        for n in range(5):
            with workflow_run("wf", workflow_id=f"later-{n}", tracer_provider=provider) as run:
                for name in "abcdefgh":  # 40 step rows, four times the memory cap
                    with run.step(name):
                        pass
        wait_for(lambda: processor.stats["rows_spooled"] >= 45, "the later rows to be spooled")
        assert processor.stats["steps_dropped"] == dropped, processor.stats
    finally:
        processor.shutdown(5_000)
    assert processor.stats["steps_dropped"] == dropped, processor.stats
    assert processor.stats["rows_lost"] == 0, processor.stats


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of the test's own (needs root): a disk that really fills up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (root needed): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_batch_larger_than_the_space_left_is_split_not_abandoned(
    small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database down, the spool on a 64 KiB disk mostly filled: one batch of 5 runs x 20 steps
    does not fit whole; what fits is spooled at once (rows_spooled grows) and the rest waits in
    memory. Once the filler is deleted the rest follows: nothing dropped or lost, and the
    spool replays to 5 completed runs with 100 step rows."""
    blocked = tmp_path / "blocked"
    blocked.write_text("no fallback either")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    spool_dir = small_disk / "spool"
    processor = WorkflowHistorySpanProcessor(
        make_engine(UNREACHABLE), spool_dir=str(spool_dir), spool_after=0.1
    )
    provider = own_provider(processor)
    filler = small_disk / "filler"
    try:
        with workflow_run("wf", workflow_id="first", tracer_provider=provider):
            pass
        wait_for(lambda: processor.stats["writer_state"] == "spooling", "the outage")
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"x" * (free - 12 * 1024))  # 12 KiB left: a few dozen rows
        before = processor.stats["rows_spooled"]
        sys.setswitchinterval(5.0)  # all of it queued before the writer drains: one batch
        try:
            for n in range(5):
                with workflow_run("wf", workflow_id=f"wf-{n}", tracer_provider=provider) as run:
                    for s in range(20):
                        with run.step(f"s{s}"):
                            pass
        finally:
            sys.setswitchinterval(0.005)
        wait_for(lambda: processor.stats["spool_errors"] > 0, "the disk to refuse a batch")
        wait_for(lambda: processor.stats["rows_spooled"] > before, "the part that fits")
        assert processor.stats["rows_lost"] == 0 and processor.stats["steps_dropped"] == 0
        filler.unlink()
        wait_for(lambda: not processor.writer.has_pending, "the rest to be spooled")
    finally:
        processor.shutdown(5_000)
    stats = processor.stats
    assert (stats["rows_lost"], stats["steps_dropped"], stats["events_dropped"]) == (0, 0, 0)
    engine = make_engine(f"sqlite:///{tmp_path}/replayed.db")
    create_schema(engine)
    replayer = Replayer(spool_dir / spool_key(UNREACHABLE), spool_key(UNREACHABLE))
    while replayer.replay_chunk(engine):
        pass
    with engine.connect() as connection:
        runs = connection.execute(sa.select(workflow_history.c.status)).scalars().all()
        steps = connection.scalar(sa.select(sa.func.count()).select_from(workflow_step_history))
    assert (sorted(runs), steps) == (["completed"] * 6, 100)
    engine.dispose()
