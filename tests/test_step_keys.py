"""Step rows are keyed by ``(run_id, span_id)``: span ids that collide across runs lose nothing.

An application's own provider with the SDK's default ids draws span ids from the global
``random`` module; after ``random.seed()`` every run gets the same span ids. Each run's steps must
still get rows of their own, and two different steps that claim one key within a run are a
conflict that is counted and logged, never a silent overwrite.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from sqlalchemy.engine import Engine

from exporters import create_schema, make_engine
from exporters.db.bulk import bulk_upsert_rows
from exporters.db.schema import workflow_step_history
from exporters.db.upsert import upsert_rows
from exporters.spool.format import STEP
from exporters.spool.replay import fold_rows
from instrumentation import RunStatus, StepStatus, workflow_run
from tests.conftest import History


def step(run_id: str, span_id: str, index: int, status: str, **extra: Any) -> dict[str, Any]:
    row = {c.name: None for c in workflow_step_history.columns if c.name != "id"}
    row.update(
        run_id=run_id,
        span_id=span_id,
        step_index=index,
        step_name=f"step-{index}",
        attempt=1,
        status=status,
    )
    row.update(extra)
    return row


def test_seeded_default_ids_in_three_runs_keep_all_nine_steps(
    history: History, tracer_provider: TracerProvider
) -> None:
    run_ids = []
    for _ in range(3):
        random.seed(1234)  # the SDK's RandomIdGenerator draws from the global random module
        with workflow_run("wf", tracer_provider=tracer_provider) as run:
            for name in "abc":
                with run.step(name):
                    pass
        run_ids.append(run.run_id)
    history.flush()
    rows = [history.steps(run_id) for run_id in run_ids]
    assert [[r.step_name for r in steps] for steps in rows] == [["a", "b", "c"]] * 3
    assert len({r.span_id for steps in rows for r in steps}) == 3  # the ids did collide
    assert all(r.status == StepStatus.COMPLETED for steps in rows for r in steps)
    assert [r.status for r in history.runs()] == [RunStatus.COMPLETED] * 3


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """The history tables on each backend; the pool is closed after the test."""
    engine = make_engine(db_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("path", [upsert_rows, bulk_upsert_rows])
def test_same_span_id_in_other_runs_gives_rows_of_their_own(engine: Engine, path: Any) -> None:
    rows = [step(f"run-{n}", "00f067aa0ba902b7", 1, StepStatus.COMPLETED) for n in range(3)]
    with engine.begin() as connection:
        result = path(connection, [], rows)
    with engine.connect() as connection:
        stored = connection.execute(sa.select(workflow_step_history.c.run_id)).scalars().all()
    assert sorted(stored) == ["run-0", "run-1", "run-2"]
    assert result.step_conflicts == 0


@pytest.mark.parametrize("path", [upsert_rows, bulk_upsert_rows])
def test_two_steps_claiming_one_key_are_counted_and_logged(
    engine: Engine, path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    first = step("run-1", "00f067aa0ba902b7", 1, StepStatus.RUNNING)
    other = step("run-1", "00f067aa0ba902b7", 2, StepStatus.COMPLETED)
    again = step("run-1", "00f067aa0ba902b7", 1, StepStatus.COMPLETED)
    with engine.begin() as connection:
        assert path(connection, [], [first]).step_conflicts == 0
    with caplog.at_level(logging.WARNING, logger="flowtel.db"), engine.begin() as connection:
        result = path(connection, [], [other])
    assert result.step_conflicts == 1
    assert "run-1" in caplog.text and "00f067aa0ba902b7" in caplog.text
    with engine.begin() as connection:  # the step's own end still lands
        assert path(connection, [], [again]).step_conflicts == 0
    with engine.begin() as connection:  # a replayed duplicate of a finished step is no conflict
        assert path(connection, [], [again]).step_conflicts == 0
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(workflow_step_history.c.step_index, workflow_step_history.c.status)
        ).all()
    assert [tuple(r) for r in stored] == [(1, StepStatus.COMPLETED)]


def test_the_replay_fold_keeps_the_first_of_two_steps_under_one_key_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = step("run-1", "00f067aa0ba902b7", 1, StepStatus.RUNNING)
    other = step("run-1", "00f067aa0ba902b7", 2, StepStatus.COMPLETED)
    elsewhere = step("run-2", "00f067aa0ba902b7", 1, StepStatus.COMPLETED)
    with caplog.at_level(logging.WARNING, logger="flowtel.spool"):
        _, steps = fold_rows([(STEP, first), (STEP, other), (STEP, elsewhere)])
    assert steps == [first, elsewhere]
    assert "run run-1 span 00f067aa0ba902b7" in caplog.text


class _OneStepId(RandomIdGenerator):
    """Every span gets the same span id: two steps of one run collide on their key."""

    def generate_span_id(self) -> int:
        return 0x00F067AA0BA902B7


def test_the_writer_counts_step_conflicts_in_its_stats(db_url: str) -> None:
    """Two steps of one run under one span id: one row, and the other counted, not hidden."""
    provider = TracerProvider(id_generator=_OneStepId())
    recorder = History(db_url)
    provider.add_span_processor(recorder.processor)
    with workflow_run("wf", tracer_provider=provider) as run:
        with run.step("a"):
            pass
        with run.step("b"):
            pass
    recorder.flush()
    assert [r.step_name for r in recorder.steps(run.run_id)] == ["a"]
    assert recorder.processor.stats["step_conflicts"] == 1
    recorder.processor.shutdown(5_000)
    recorder.engine.dispose()
    provider.shutdown()
