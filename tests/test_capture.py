"""What the processors queue on the application's thread, and what the writer skips.

Queued events must hold plain values only: a queued SDK object (span context, status, events
list) or a dict inside a tuple stays tracked by the garbage collector, and tens of thousands of
them queued behind a busy application made every full collection walk them on the
application's thread. An exact tuple of plain values is untracked at the collector's first
pass, which is what these tests check. The writer drops a step's start when the same batch
holds its end, and the rows it writes are the same either way.
"""

from __future__ import annotations

import gc
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from exporters.history.capture import (
    StepEnd,
    StepStart,
    capture_end,
    capture_start,
    decode,
    drop_superseded_starts,
)
from exporters.history.pending import PendingRows
from exporters.telemetry.metrics import WorkflowMetricsSpanProcessor
from instrumentation import workflow_run


class _Capture(SpanProcessor):
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        self.events.append(capture_start(span))

    def on_end(self, span: ReadableSpan) -> None:
        self.events.append(capture_end(span))


def _three_step_run(provider: TracerProvider, *, fail: bool = False) -> None:
    try:
        with workflow_run("provision", tracer_provider=provider, context={"rack": 7}) as run:
            for name in ("select", "image", "boot"):
                with run.step(name, description="a step"):
                    if fail and name == "boot":
                        raise RuntimeError("no link")
    except RuntimeError:
        pass


def _captured(*, fail: bool = False) -> list[Any]:
    provider = TracerProvider()
    capture = _Capture()
    provider.add_span_processor(capture)
    _three_step_run(provider, fail=fail)
    return [event for event in capture.events if event is not None]


def test_queued_step_events_are_untracked_by_the_garbage_collector() -> None:
    events = _captured()
    gc.collect()
    steps = [e for e in events if type(decode(e)) in (StepStart, StepEnd)]
    assert len(steps) == 6
    assert [gc.is_tracked(e) for e in steps] == [False] * 6


def test_metrics_queue_holds_plain_values() -> None:
    provider = TracerProvider()
    metrics = WorkflowMetricsSpanProcessor(MeterProvider(), interval=3600)
    provider.add_span_processor(metrics)
    try:
        _three_step_run(provider)
        queued = list(metrics._queue)
        gc.collect()
        assert len(queued) == 5  # the run's start, three step ends, the run's end
        assert [gc.is_tracked(item) for item in queued] == [False] * 5
    finally:
        metrics.shutdown()


def test_superseded_starts_are_dropped_and_the_rows_are_unchanged() -> None:
    events = _captured(fail=True)
    kept = drop_superseded_starts(events)
    kinds = [type(decode(e)).__name__ for e in kept]
    assert kinds.count("StepStart") == 0 and kinds.count("StepEnd") == 3
    # a start whose end is in a later batch is kept
    first_half = events[: events.index(next(e for e in events if type(decode(e)) is StepEnd))]
    assert sum(type(decode(e)) is StepStart for e in drop_superseded_starts(first_half)) == 1

    def rows(batches: list[list[Any]]) -> Any:
        pending = PendingRows("svc", None, ("server_id", "device_type"))
        for batch in batches:
            pending.fold(batch)
        run_rows, step_rows = pending.take()
        for row in run_rows:
            for key in ("updated_at", "seq"):
                row.pop(key)
            row["metadata"]["timestamps"].pop("updated_at")
        return run_rows, step_rows

    one_event_per_batch = rows([[event] for event in events])
    one_batch = rows([events])
    assert one_batch == one_event_per_batch
    statuses = [row["status"] for row in one_batch[1]]
    assert statuses == ["completed", "completed", "failed"]
    assert one_batch[0][0]["status"] == "failed" and one_batch[0][0]["current_step"] == "boot"


def test_metadata_entries_follow_every_change_between_renders() -> None:
    """A run row rendered after each event shows each step's latest state (the per-step
    metadata entry is cached between renders and must be rebuilt when the step changes)."""
    provider = TracerProvider()
    capture = _Capture()
    provider.add_span_processor(capture)
    with workflow_run("provision", tracer_provider=provider, total_steps=2) as run:
        with run.step("ipmi") as step:
            step.retrying("no answer")
        with run.step("ipmi"):
            pass
        with run.step("boot") as step:
            step.skip("not needed")
    pending = PendingRows("svc", None, ("server_id", "device_type"))
    seen = []
    for event in (e for e in capture.events if e is not None):
        pending.fold([event])
        run_rows, _ = pending.take()
        pending.landed(True)
        for row in run_rows:
            seen.append([(s["status"], s["attempts"]) for s in row["metadata"]["steps"]])
    assert seen[0] == []  # the run's start
    assert ("running", 1) in [steps[0] for steps in seen if steps]
    assert ("retrying", 1) in [steps[0] for steps in seen if steps]
    assert ("running", 2) in [steps[0] for steps in seen if steps]
    assert seen[-1] == [("completed", 2), ("skipped", 1)]
