"""Durability levels: what a process that dies at once keeps, on every database.

``async`` (the default) never makes the workflow wait, so ``os._exit`` right after a workflow
loses what the writer had not committed yet. ``run`` makes a run's start and end return only
once committed or fsync'd to the spool: ``os._exit`` right after the workflow loses nothing.
``step`` does the same for each step's end: SIGKILL right after a step ends keeps that step.
Every wait is bounded, and a database that never answers costs the workflow the timeout, never
an exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.db.schema import workflow_history, workflow_step_history
from instrumentation import workflow_run

ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql+psycopg://flowtel:pw@127.0.0.1:9/nowhere?connect_timeout=1"

CHILD = """
import os, signal, sys
from opentelemetry.sdk.trace import TracerProvider
from exporters import WorkflowHistorySpanProcessor, make_engine
from instrumentation import workflow_run
url, durability, ending = sys.argv[1:4]
# a writer that sleeps 30 s between looks: only the durable waits wake it in time
processor = WorkflowHistorySpanProcessor(
    make_engine(url), durability=durability, spool=False, flush_interval=30
)
provider = TracerProvider(shutdown_on_exit=False)
provider.add_span_processor(processor)
assert processor.force_flush(20_000)  # the tables exist
with workflow_run("wf", workflow_id="durable", tracer_provider=provider) as run:
    print(run.run_id, flush=True)
    for name in "abc":
        with run.step(name):
            pass
    if ending == "kill-after-step":
        os.kill(os.getpid(), signal.SIGKILL)
os._exit(0)
"""


def child(url: str, durability: str, ending: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, url, durability, ending],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.stdout.strip(), done.stderr
    return done.stdout.split()[0]


def recorded(url: str, run_id: str) -> tuple[str | None, list[tuple[str, str]]]:
    engine = make_engine(url)
    with engine.connect() as connection:
        status = connection.scalar(
            sa.select(workflow_history.c.status).where(workflow_history.c.run_id == run_id)
        )
        steps = connection.execute(
            sa.select(workflow_step_history.c.step_name, workflow_step_history.c.status)
            .where(workflow_step_history.c.run_id == run_id)
            .order_by(workflow_step_history.c.step_index)
        ).all()
    engine.dispose()
    return status, [(name, state) for name, state in steps]


def test_run_level_loses_nothing_at_os_exit(db_url: str) -> None:
    """``os._exit`` right after the workflow: under ``run`` the run row is there, final."""
    run_id = child(db_url, "run", "os-exit")
    status, _ = recorded(db_url, run_id)
    assert status == "completed"


def test_async_level_loses_the_run_at_os_exit(db_url: str) -> None:
    """The price of the default, shown: the writer had not committed the run yet."""
    run_id = child(db_url, "async", "os-exit")
    status, _ = recorded(db_url, run_id)
    assert status != "completed"


def test_step_level_keeps_every_ended_step_at_sigkill(db_url: str) -> None:
    """SIGKILL right after the third step ended: under ``step`` all three are recorded."""
    run_id = child(db_url, "step", "kill-after-step")
    status, steps = recorded(db_url, run_id)
    assert status == "running"
    assert steps == [("a", "completed"), ("b", "completed"), ("c", "completed")]


def test_a_silent_database_costs_the_timeout_never_an_exception(tmp_path: Path) -> None:
    """Database unreachable and no spool: each durable wait gives up at its timeout."""
    processor = WorkflowHistorySpanProcessor(
        make_engine(UNREACHABLE), durability="step", durability_timeout=0.2, spool=False
    )
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    started = time.monotonic()
    with workflow_run("wf", tracer_provider=provider) as run:
        for name in "ab":
            with run.step(name):
                pass
    took = time.monotonic() - started
    assert processor.stats["durable_timeouts"] == 4  # run start, two step ends, run end
    assert took < 4 * 0.2 + 1.0, took
    processor.shutdown(1_000)


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="durability='sync' is not one of async, run, step"):
        WorkflowHistorySpanProcessor(make_engine("sqlite://"), durability="sync")


def end_other_connections(url: str) -> int:
    """End every other session on *url*'s database (as a restarted server or proxy would)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            ended = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        else:
            ids = connection.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist "
                    "WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                )
            ).scalars()
            ended = 0
            for session in list(ids):
                connection.execute(sa.text(f"KILL CONNECTION {int(session)}"))
                ended += 1
    engine.dispose()
    return int(ended)


def test_a_kept_connection_the_server_ended_costs_no_failed_batch_nor_wait(db_url: str) -> None:
    """The writer keeps its connection between batches; once the server ended it, the next
    durable step is committed on a new connection at once: no write error, no timeout."""
    if db_url.startswith("sqlite"):
        pytest.skip("no server session to end on SQLite")
    processor = WorkflowHistorySpanProcessor(
        make_engine(db_url), durability="step", durability_timeout=20, spool=False
    )
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    try:
        assert processor.force_flush(20_000)
        with workflow_run("wf", workflow_id="kept", tracer_provider=provider) as run:
            with run.step("before"):
                pass
            assert end_other_connections(db_url) >= 1
            time.sleep(0.2)  # let the server close the sessions
            with run.step("after"):
                pass
        stats = processor.stats
        assert (stats["durable_timeouts"], stats["write_errors"]) == (0, 0), stats
        status, steps = recorded(db_url, run.run_id)
        assert status == "completed"
        assert steps == [("before", "completed"), ("after", "completed")]
    finally:
        processor.shutdown(10_000)
