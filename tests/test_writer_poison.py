"""One bad value costs that value, never the writer; a writer that dies anyway says so.

Any OpenTelemetry sender can emit ``workflow.declared_steps`` as an int, and a setting can
carry a typo. The writer stores the run without the value it cannot use (counted in
``values_rejected``, logged once with the run id), drops an event it cannot fold at all
(``events_rejected``) and keeps recording the runs that follow. ``FLOWTEL_TRACE_URL_TEMPLATE``
is checked when the processor is built and in ``configure()``, with an error saying what to
write. If the writer's thread ends anyway, ``writer_state`` is ``dead``, ``put`` refuses and
counts every event and logs it at ERROR once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

import exporters
from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.history.writer import HistoryWriter, WriterState
from exporters.telemetry.metrics import LOST, observe_writer
from instrumentation import workflow_run


def own_provider(processor: WorkflowHistorySpanProcessor) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return provider


def statuses(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(workflow_history.c.run_id, workflow_history.c.status))
        return {run_id: status for run_id, status in rows}


def step_count(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        query = sa.select(sa.func.count()).select_from(workflow_step_history)
        return int(connection.scalar(query) or 0)


def test_an_int_declared_steps_costs_that_value_and_later_runs_are_recorded(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A foreign span with ``workflow.declared_steps=3``, then three normal runs: all four
    rows land, the foreign one without declared steps; values_rejected is 1, logged once at
    ERROR with the run id; the writer stays alive and healthy."""
    caplog.set_level(logging.ERROR, logger="flowtel")
    engine = make_engine(db_url)
    processor = WorkflowHistorySpanProcessor(engine)
    provider = own_provider(processor)
    try:
        attributes = {"workflow.run_id": "foreign-1", "workflow.declared_steps": 3}
        with provider.get_tracer("foreign").start_as_current_span("legacy", attributes=attributes):
            pass
        run_ids = []
        for _ in range(3):
            with workflow_run("wf", tracer_provider=provider) as run, run.step("a"):
                pass
            run_ids.append(run.run_id)
        assert processor.force_flush(20_000), processor.stats
        recorded = statuses(engine)
        assert set(recorded) == {"foreign-1", *run_ids}
        assert {recorded[r] for r in run_ids} == {"completed"}
        stats = processor.stats
        assert stats["values_rejected"] == 1 and stats["events_rejected"] == 0, stats
        assert processor.writer.alive
        assert stats["writer_state"] == WriterState.HEALTHY.value
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len([m for m in errors if "foreign-1" in m]) == 1, errors
        assert "workflow.declared_steps=3" in next(m for m in errors if "foreign-1" in m)
    finally:
        processor.shutdown(10_000)
        engine.dispose()


def lost_by_reason(processor: WorkflowHistorySpanProcessor) -> dict[str, int]:
    """The ``flowtel.writer.lost`` counter's points, by reason, as a metric reader sees them."""
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    observe_writer(meters.get_meter("flowtel"), lambda: processor.stats)
    data = reader.get_metrics_data()
    meters.shutdown()
    return {
        str(p.attributes["reason"]): int(p.value)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == LOST
        for p in metric.data.data_points
    }


def test_an_event_that_cannot_be_folded_is_counted_and_the_next_run_is_recorded(
    db_url: str,
) -> None:
    """A malformed event tuple handed to the writer is dropped and counted in
    events_rejected; the run queued after it is recorded."""
    engine = make_engine(db_url)
    processor = WorkflowHistorySpanProcessor(engine)
    provider = own_provider(processor)
    try:
        assert processor.writer.put((2, {"workflow.run_id": "broken"}))  # a run end, cut short
        with workflow_run("wf", tracer_provider=provider) as run, run.step("a"):
            pass
        assert processor.force_flush(20_000), processor.stats
        assert statuses(engine) == {run.run_id: "completed"}
        assert step_count(engine) == 1
        assert processor.stats["events_rejected"] == 1, processor.stats
        assert processor.writer.alive
        assert lost_by_reason(processor)["rejected_input"] == 1  # one alert covers it too
    finally:
        processor.shutdown(10_000)
        engine.dispose()


def test_a_trace_url_template_that_does_not_render_is_stored_as_no_link(db_url: str) -> None:
    """A template that fails to render for a run (a writer built by hand, without the check)
    costs the run's link only: the row lands with no link, values_rejected is 1."""
    engine = make_engine(db_url)
    writer = HistoryWriter(engine, trace_url_template="{trace_id.nope}")
    attributes = {"workflow.run_id": "r1", "workflow.name": "wf"}
    try:
        writer.fold([(2, attributes, 1, 2, 1, 1_000, 2_000, None, None)])  # a run's end
        assert writer.write(), writer.snapshot()
        with engine.connect() as connection:
            metadata = connection.scalar(sa.select(workflow_history.c.metadata))
        assert isinstance(metadata, dict) and metadata["trace"]["url"] is None
        assert statuses(engine) == {"r1": "completed"}
        assert writer.snapshot()["values_rejected"] == 1
    finally:
        writer.close()
        engine.dispose()


@pytest.mark.parametrize("template", ["http://jaeger:16686/trace/{traceid}", "x/{trace_id"])
def test_a_trace_url_template_typo_is_refused_when_the_processor_is_built(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment variable or the argument: a ValueError naming the template and the
    two fields it may use, before any thread starts."""
    monkeypatch.setenv("FLOWTEL_TRACE_URL_TEMPLATE", template)
    with pytest.raises(ValueError, match=r"may name only \{trace_id\} and \{span_id\}") as info:
        WorkflowHistorySpanProcessor(make_engine("sqlite://"))
    assert repr(template) in str(info.value)
    monkeypatch.delenv("FLOWTEL_TRACE_URL_TEMPLATE")
    with pytest.raises(ValueError, match="cannot be used"):
        WorkflowHistorySpanProcessor(make_engine("sqlite://"), trace_url_template=template)


def test_configure_refuses_a_trace_url_template_typo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``configure()`` fails with the template's error, and no handle is left configured
    (a corrected call then works)."""
    monkeypatch.setenv("FLOWTEL_TRACE_URL_TEMPLATE", "http://jaeger/{traceid}")
    url = f"sqlite:///{tmp_path}/h.db"
    with pytest.raises(ValueError, match=r"unknown field \{traceid\}"):
        exporters.configure(database_url=url, otlp=False, metrics=False, logs=False)
    monkeypatch.setenv("FLOWTEL_TRACE_URL_TEMPLATE", "http://jaeger/{trace_id}")
    handle = exporters.configure(database_url=url, otlp=False, metrics=False, logs=False)
    handle.shutdown()


class _KillsTheThread:
    """An event whose every use raises SystemExit: only the last-resort handler sees it."""

    def __getitem__(self, index: Any) -> Any:
        raise SystemExit("the writer's thread is gone")


def test_a_dead_writer_thread_is_reported_and_put_refuses_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once the thread has died: writer_state is 'dead', alive is False, put() returns
    False and counts the event, and the first refused put logs at ERROR (once)."""
    caplog.set_level(logging.ERROR, logger="flowtel")
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    writer = HistoryWriter(engine)
    writer.start()
    try:
        writer.put(_KillsTheThread())
        deadline = time.monotonic() + 10
        while writer.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not writer.alive
        assert writer.state is WriterState.DEAD
        assert writer.snapshot()["writer_state"] == "dead"
        event = (1, "r1", "s", 1, 1, 7, 0)  # a step start
        assert writer.put(event) is False
        assert writer.put(event) is False
        assert writer.snapshot()["events_dropped"] == 2
        refusals = [r for r in caplog.records if "thread has died" in r.getMessage()]
        assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR
        assert writer.flush(1.0) is False
    finally:
        engine.dispose()
