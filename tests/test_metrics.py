"""Metrics count every run, sampled or not: durations, runs by status, active runs, writer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from exporters import AuditSampler
from exporters.telemetry.metrics import (
    ACTIVE_RUNS,
    DURATION_BUCKETS,
    LOST,
    RUN_DURATION,
    RUNS,
    STEP_DURATION,
    WRITER_PREFIX,
    WorkflowMetricsSpanProcessor,
    observe_writer,
)
from instrumentation import workflow_run
from tests.conftest import History


class Meters:
    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], shutdown_on_exit=False)
        self.processors: list[WorkflowMetricsSpanProcessor] = []

    def processor(self) -> WorkflowMetricsSpanProcessor:
        """A metrics processor on this provider, flushed before every read."""
        processor = WorkflowMetricsSpanProcessor(self.provider)
        self.processors.append(processor)
        return processor

    def points(self) -> dict[str, list[Any]]:
        for processor in self.processors:  # record what they queued off the caller's thread
            processor.force_flush()
        found: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture
def unsampled(tmp_path: Path) -> Iterator[tuple[TracerProvider, Meters, History]]:
    """A provider that samples nothing, with the metrics and history processors on it."""
    meters = Meters()
    provider = TracerProvider(sampler=AuditSampler(ALWAYS_OFF), shutdown_on_exit=False)
    history = History(f"sqlite:///{tmp_path}/history.db")
    provider.add_span_processor(history.processor)
    provider.add_span_processor(meters.processor())
    yield provider, meters, history
    history.processor.shutdown(5_000)


def one(points: list[Any], where: dict[str, str]) -> Any:
    (point,) = [p for p in points if all(p.attributes.get(k) == v for k, v in where.items())]
    return point


def test_runs_steps_and_active_runs_are_counted_when_unsampled(
    unsampled: tuple[TracerProvider, Meters, History],
) -> None:
    provider, meters, _ = unsampled
    for n in range(3):
        try:
            with workflow_run("provision_server", tracer_provider=provider) as run:
                with run.step("select"):
                    pass
                with run.step("commission"):
                    if n == 2:
                        raise TimeoutError("stuck")
                if n == 0:
                    active = meters.points()[ACTIVE_RUNS]
                    assert [p.value for p in active] == [1]  # inside the run
        except TimeoutError:
            pass
    with workflow_run("other", tracer_provider=provider):
        pass
    points = meters.points()
    wf, status, step = "workflow.name", "workflow.status", "workflow.step.name"
    assert one(points[RUNS], {wf: "provision_server", status: "completed"}).value == 2
    assert one(points[RUNS], {wf: "provision_server", status: "failed"}).value == 1
    assert one(points[RUNS], {wf: "other"}).value == 1
    assert {p.value for p in points[ACTIVE_RUNS]} == {0}
    completed = one(points[RUN_DURATION], {wf: "provision_server", status: "completed"})
    assert completed.count == 2 and tuple(completed.explicit_bounds) == DURATION_BUCKETS
    steps = points[STEP_DURATION]
    assert one(steps, {step: "commission", "workflow.step.status": "failed"}).count == 1
    assert one(steps, {step: "select", wf: "provision_server"}).count == 3
    assert all(p.sum < 60 for p in steps)  # seconds, not milliseconds or nanoseconds


def test_metrics_processor_ignores_other_spans_and_never_raises() -> None:
    meters = Meters()
    processor = meters.processor()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    with provider.get_tracer("lib").start_as_current_span("GET /"):
        pass

    class Broken:
        @property
        def attributes(self) -> Any:
            raise RuntimeError("boom")

    processor.on_start(Broken())  # type: ignore[arg-type]
    processor.on_end(Broken())  # type: ignore[arg-type]
    assert processor.errors == 2
    assert meters.points() == {}


def test_writer_health_is_observed(unsampled: tuple[TracerProvider, Meters, History]) -> None:
    provider, meters, history = unsampled
    stats = history.processor.stats
    names = observe_writer(meters.provider.get_meter("flowtel"), lambda: history.processor.stats)
    expected = {WRITER_PREFIX + k for k, v in stats.items() if isinstance(v, int)} | {LOST}
    assert set(names) == expected and WRITER_PREFIX + "queue_depth" in names
    for _ in range(5):
        with workflow_run("wf", tracer_provider=provider) as run, run.step("s"):
            pass
    history.flush()
    points = meters.points()
    assert points[WRITER_PREFIX + "runs_written"][0].value >= 5
    assert points[WRITER_PREFIX + "batches_written"][0].value >= 1
    assert points[WRITER_PREFIX + "write_errors"][0].value == 0
    assert points[WRITER_PREFIX + "queue_depth"][0].value == 0


def test_new_writer_counters_are_picked_up() -> None:
    meters = Meters()
    counters = {"rows_spooled": 3, "last_error": "text", "ok": True, "queue_depth": 1}
    assert observe_writer(meters.provider.get_meter("flowtel"), lambda: counters) == [
        WRITER_PREFIX + "rows_spooled",
        WRITER_PREFIX + "queue_depth",
    ]
    assert meters.points()[WRITER_PREFIX + "rows_spooled"][0].value == 3
