"""A wall clock stepped back mid-run never gives a negative duration or an end before the start.

Spans opened by flowtel's API time themselves with the process's monotonic clock (the wall clock
only anchors the start), so their end never precedes their start; the history rows clamp
whatever reaches them (a span ended elsewhere) so that ``duration_ms >= 0`` and ``completed_at
>= started_at`` always hold.
"""

from __future__ import annotations

import time
from typing import Any

import opentelemetry.sdk.trace as sdk_trace
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters.history.capture import StepEnd, decode
from instrumentation import StepStatus, workflow_run
from tests.conftest import History

HOUR_NS = 3_600 * 1_000_000_000


class SteppedClock:
    """``time.time_ns`` that jumps back an hour when :meth:`step_back` is called."""

    def __init__(self) -> None:
        self.offset = 0
        self.real = time.time_ns

    def __call__(self) -> int:
        return self.real() + self.offset

    def step_back(self) -> None:
        self.offset -= HOUR_NS


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    stepped = SteppedClock()
    monkeypatch.setattr(time, "time_ns", stepped)
    monkeypatch.setattr(sdk_trace, "time_ns", stepped)  # the SDK's own binding
    return stepped


def test_a_clock_stepped_back_mid_run_gives_no_negative_duration(
    history: History,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    clock: SteppedClock,
) -> None:
    with workflow_run("wf", tracer_provider=tracer_provider) as run:
        with run.step("before"):
            time.sleep(0.002)
        with run.step("across"):
            time.sleep(0.002)
            clock.step_back()
            time.sleep(0.002)
    history.flush()
    (row,) = history.runs(run_id=run.run_id)
    steps = history.steps(run.run_id)
    assert [s.status for s in steps] == [StepStatus.COMPLETED] * 2
    for stored in [row, *steps]:
        assert stored.duration_ms is not None and stored.duration_ms >= 0, stored
        assert stored.completed_at >= stored.started_at, stored
    assert steps[1].duration_ms >= 3  # measured, not clamped to zero
    spans = span_exporter.get_finished_spans()
    assert spans and all(s.end_time >= s.start_time for s in spans)  # type: ignore[operator]


def test_an_end_before_its_start_is_clamped_where_it_reaches_the_rows() -> None:
    """A span ended by another clock (another process) still gives a non-negative row."""
    start = 1_800_000_000 * 10**9
    raw: tuple[Any, ...] = (
        3, "run-1", "s", 1, 1, None, None, 7, start, start - HOUR_NS, (), None, None,
    )  # fmt: skip  (a step end: ..., its events, then no input and no output recorded)
    event = decode(raw)
    assert isinstance(event, StepEnd)
    assert event.end_ns == start
