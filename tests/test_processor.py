"""The span processor's promises: never raise, never block, log a dead database once."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from instrumentation import workflow_run
from tests.conftest import _SWITCHBOARD

UNREACHABLE = "postgresql+psycopg://flowtel:topsecret@127.0.0.1:9/nowhere?connect_timeout=1"


def test_unreachable_database_never_fails_the_workflow(
    tracer_provider: TracerProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """With no database at all, workflows run and the error is logged once, password masked."""
    processor = WorkflowHistorySpanProcessor(make_engine(UNREACHABLE))
    _SWITCHBOARD.targets.append(processor)
    caplog.set_level(logging.WARNING, logger="flowtel")
    results = []
    for n in range(50):
        with workflow_run("provision_server") as run:
            for name in ("a", "b", "c"):
                with run.step(name):
                    results.append(n)
    assert len(results) == 150
    assert processor.force_flush(3_000) is False
    time.sleep(0.3)
    processor.shutdown(1_000)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "127.0.0.1:9" in errors[0].getMessage()
    assert "topsecret" not in caplog.text
    assert processor.stats["write_errors"] >= 1


def test_processor_swallows_its_own_failures(tracer_provider: TracerProvider) -> None:
    """A span whose attributes break event building does not break the caller."""
    processor = WorkflowHistorySpanProcessor(make_engine("sqlite://"))

    class Broken:
        @property
        def attributes(self) -> Any:
            raise RuntimeError("boom")

    processor.on_start(Broken())  # type: ignore[arg-type]
    processor.on_end(Broken())  # type: ignore[arg-type]
    assert processor.stats["callback_errors"] == 2
    processor.shutdown(1_000)


def test_writer_sql_runs_with_instrumentation_suppressed(
    tmp_path: Any, tracer_provider: TracerProvider
) -> None:
    """Every statement the writer runs sees the suppress-instrumentation flag."""
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    flags: list[object] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def record(*_args: Any) -> None:
        flags.append(otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY))

    processor = WorkflowHistorySpanProcessor(engine)
    _SWITCHBOARD.targets.append(processor)
    with workflow_run("provision_server") as run, run.step("only"):
        pass
    assert processor.force_flush(5_000)
    processor.shutdown(1_000)
    assert flags and set(flags) == {True}


def test_force_flush_and_shutdown_honour_their_timeouts(tracer_provider: TracerProvider) -> None:
    """Against a database that never answers, flush and shutdown return within the timeout."""
    processor = WorkflowHistorySpanProcessor(make_engine(UNREACHABLE))
    _SWITCHBOARD.targets.append(processor)
    for _ in range(20):
        with workflow_run("provision_server") as run, run.step("s"):
            pass
    started = time.monotonic()
    processor.force_flush(200)
    processor.shutdown(300)
    took = time.monotonic() - started
    assert took < 3.0, f"flush+shutdown took {took:.2f} s"


def test_spans_after_shutdown_are_ignored(tmp_path: Any, tracer_provider: TracerProvider) -> None:
    """After shutdown the processor queues nothing and does not raise."""
    processor = WorkflowHistorySpanProcessor(make_engine(f"sqlite:///{tmp_path}/h.db"))
    _SWITCHBOARD.targets.append(processor)
    processor.shutdown(1_000)
    with workflow_run("provision_server") as run, run.step("s"):
        pass
    assert processor.stats["queue_depth"] == 0


def test_overflow_spooled_with_a_healthy_database_is_replayed_before_flush_answers(
    tmp_path: Any, tracer_provider: TracerProvider
) -> None:
    """A burst past the spool threshold is spooled, replayed, and force_flush says True."""
    processor = WorkflowHistorySpanProcessor(
        make_engine(f"sqlite:///{tmp_path}/h.db"),
        spool_dir=str(tmp_path / "spool"),
        spool_threshold=20,
    )
    _SWITCHBOARD.targets.append(processor)
    for _ in range(100):
        with workflow_run("provision_server") as run:
            for name in ("a", "b", "c"):
                with run.step(name):
                    pass
    assert processor.force_flush(20_000) is True, processor.stats
    stats = processor.stats
    processor.shutdown(5_000)
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    with engine.connect() as connection:
        runs = connection.execute(sa.text("SELECT count(*) FROM workflow_history")).scalar()
        steps = connection.execute(sa.text("SELECT count(*) FROM workflow_step_history")).scalar()
    engine.dispose()
    assert (runs, steps) == (100, 300)
    assert stats["rows_spooled"] > 0 and stats["rows_replayed"] == stats["rows_spooled"]
