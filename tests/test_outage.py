"""Database outages: nothing is lost, nothing waits, and flushes keep their deadlines.

The PostgreSQL outages stop a private server of this session (``private_postgres``), never the
shared one. A database call that hangs is made real with SQLite: another connection holds the
write lock, so the writer's commit waits in SQLite's busy handler.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.spool.files import spool_files
from exporters.spool.replay import replay_spool
from instrumentation import workflow_run
from tests.pg_private import PrivatePostgres

STEPS = ("select", "configure", "deploy", "verify", "notify")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll *condition* until it holds; fail naming *what* if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def recorded(engine: sa.Engine) -> tuple[int, int, int]:
    """(completed runs, distinct run ids, completed steps); (-1, -1, -1) if unreachable."""
    try:
        with engine.connect() as connection:
            runs = connection.execute(
                sa.select(
                    sa.func.count().filter(workflow_history.c.status == "completed"),
                    sa.func.count(sa.distinct(workflow_history.c.run_id)),
                )
            ).one()
            steps = connection.scalar(
                sa.select(sa.func.count()).where(workflow_step_history.c.status == "completed")
            )
    except sa.exc.DBAPIError:
        return -1, -1, -1
    return int(runs[0]), int(runs[1]), int(steps or 0)


def history(url: str, **options: Any) -> tuple[WorkflowHistorySpanProcessor, TracerProvider]:
    processor = WorkflowHistorySpanProcessor(make_engine(url), **options)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    assert processor.force_flush(10_000)  # tables created, writer idle
    return processor, provider


def provision(provider: TracerProvider, name: str, pause: float = 0.0) -> None:
    with workflow_run("provision_server", workflow_id=name, tracer_provider=provider) as run:
        for step in STEPS:
            with run.step(step):
                time.sleep(pause)


@contextmanager
def stopped(server: PrivatePostgres) -> Iterator[None]:
    """The private server is down inside the block and always up again after it."""
    server.stop()
    try:
        yield
    finally:
        server.start()


def test_postgres_stopped_while_200_workflows_run(private_postgres: PrivatePostgres) -> None:
    """All 200 runs and their 1,000 steps end up committed; no workflow fails or waits."""
    url = private_postgres.new_database()
    processor, provider = history(url, spool_after=0.2)
    done: list[str] = []
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(50):
                provision(provider, f"provision_srv-{k}-{i}", pause=0.002)
                done.append(f"{k}-{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(done) >= 20 and processor.stats["batches_written"] > 1, "first rows")
    with stopped(private_postgres):
        finished_before = len(done)
        wait_for(lambda: processor.stats["rows_spooled"] > 0, "rows to be spooled")
        wait_for(lambda: len(done) >= finished_before + 50, "workflows during the outage")
        finished_during = len(done) - finished_before
    for thread in threads:
        thread.join()
    assert errors == []
    assert finished_during >= 50  # they ran on while nothing could be written
    engine = processor.engine
    wait_for(lambda: recorded(engine) == (200, 200, 1000), "every run and step committed")
    wait_for(lambda: not spool_files(processor.spool_directory or Path()), "the spool drained")
    wait_for(lambda: processor.stats["rows_replayed"] >= processor.stats["rows_spooled"], "count")
    stats = processor.stats
    assert stats["rows_spooled"] > 0
    assert stats["events_dropped"] == stats["steps_dropped"] == 0
    processor.shutdown(5_000)


def test_shutdown_during_an_outage_spools_and_the_next_start_replays(
    private_postgres: PrivatePostgres,
) -> None:
    """Flush and shutdown give up in time, spool the rest; ``replay_spool`` restores it."""
    url = private_postgres.new_database()
    processor, provider = history(url)
    with stopped(private_postgres):
        for i in range(20):
            provision(provider, f"provision_srv-{i}")
        assert processor.force_flush(500) is False
        assert processor.shutdown(500) is False
    assert processor.stats["rows_spooled"] >= 20 + 20 * len(STEPS)
    engine = make_engine(url)
    result = replay_spool(engine)  # what configure() runs at the next start
    assert (result.error, result.remaining_files) == (None, 0)
    assert recorded(engine) == (20, 20, 20 * len(STEPS))
    engine.dispose()


@contextmanager
def write_locked(url: str) -> Iterator[Callable[[], None]]:
    """Another connection holds SQLite's write lock until the yielded function is called."""
    raw = sa.create_engine(url).raw_connection()
    raw.execute("BEGIN IMMEDIATE")  # type: ignore[attr-defined]
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            raw.rollback()

    try:
        yield release
    finally:
        release()
        raw.close()


def test_a_hung_commit_does_not_stop_flush_deadlines(tmp_path: Path) -> None:
    """With the commit stuck on a lock, force_flush and shutdown return in time, spooled."""
    url = f"sqlite:///{tmp_path}/h.db"
    processor, provider = history(url)
    with write_locked(url) as release:
        for i in range(10):
            provision(provider, f"provision_srv-{i}")
        assert processor.force_flush(400) is False  # the commit waits on the lock ...
        assert processor.stats["rows_spooled"] > 0  # ... so its rows went to the spool
        provision(provider, "provision_srv-late")
        assert processor.shutdown(400) is False
        release()
    engine = make_engine(url)
    assert replay_spool(engine).error is None
    assert recorded(engine) == (11, 11, 11 * len(STEPS))
    engine.dispose()


def test_a_full_queue_goes_to_the_spool_instead_of_being_dropped(tmp_path: Path) -> None:
    """Past the threshold the writer spools what it drains; nothing is dropped."""
    url = f"sqlite:///{tmp_path}/h.db"
    processor, provider = history(url, spool_threshold=300, max_batch_size=100)
    with write_locked(url) as release:
        for i in range(100):  # 1,200 events while the commit is stuck
            provision(provider, f"provision_srv-{i}")
        wait_for(lambda: processor.stats["queue_depth"] < 300, "the queue to be spooled")
        stats = processor.stats
        release()
    assert stats["rows_spooled"] > 0 and stats["events_dropped"] == 0
    engine = processor.engine
    wait_for(lambda: recorded(engine) == (100, 100, 100 * len(STEPS)), "all rows")
    processor.shutdown(5_000)
