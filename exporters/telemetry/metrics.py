"""Workflow metrics, counted from every run whether or not its trace is sampled.

:class:`WorkflowMetricsSpanProcessor` sits on the tracer provider beside the history processor,
so it sees the ``RECORD_ONLY`` spans that sampling keeps out of the collector too. It records
run and step durations in seconds (explicit buckets from 5 ms to 2 h), counts finished runs by
workflow and status, and keeps an up-down count of active runs; attributes are low-cardinality
(workflow name, step name, status), never run ids. :func:`observe_writer` adds the history
writer's health (queue depth, batches and rows written, errors, and whatever other counters the
processor's ``stats`` reports) as observable instruments, read at each export.
:func:`make_meter_provider` builds the provider that exports them over OTLP.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from exporters.sdk_internals import span_attributes
from exporters.telemetry.otlp import OTLPSettings
from instrumentation import __version__
from instrumentation import attributes as attr

__all__ = [
    "ACTIVE_RUNS",
    "DURATION_BUCKETS",
    "LOST",
    "RUNS",
    "RUN_DURATION",
    "STEP_DURATION",
    "WRITER_PREFIX",
    "WorkflowMetricsSpanProcessor",
    "install_metrics",
    "make_meter_provider",
    "observe_writer",
]

logger = logging.getLogger("flowtel.metrics")

RUN_DURATION = "workflow.run.duration"
STEP_DURATION = "workflow.step.duration"
RUNS = "workflow.runs"
ACTIVE_RUNS = "workflow.runs.active"
WRITER_PREFIX = "flowtel.writer."
"""Writer-health instruments are named ``flowtel.writer.<stats key>``."""
LOST = "flowtel.writer.lost"
"""Everything the history lost, one counter with a ``reason`` attribute (see ``_LOSSES``)."""
_LOSSES = {
    "events_dropped": "queue_full",  # events: the queue was at its cap
    "steps_dropped": "memory_cap",  # step rows: no working spool, oldest dropped in memory
    "rows_lost": "unwritten_at_shutdown",  # rows neither committed nor spooled at shutdown
    "export_failed": "export_failed",  # collector mode: workflow spans the collector refused
    "events_rejected": "rejected_input",  # events the writer could not fold or render
}

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
)  # fmt: skip
"""Histogram bucket bounds in seconds: a fast step to a two-hour provisioning run."""

_GAUGES = {"queue_depth": "{event}", "active_runs": "{run}"}  # key -> unit (not "1": "_ratio")
_UNKNOWN = "unknown"
_RUN_ID, _RUN_NAME, _RUN_STATUS = attr.RUN_ID, attr.RUN_NAME, attr.RUN_STATUS
_STEP_NAME, _STEP_STATUS = attr.STEP_NAME, attr.STEP_STATUS
_RUN_LABELS = (attr.RUN_NAME, attr.RUN_STATUS)
_STEP_LABELS = (attr.RUN_NAME, attr.STEP_NAME, attr.STEP_STATUS)


class WorkflowMetricsSpanProcessor(SpanProcessor):
    """Turns workflow and step spans into duration histograms and run counters.

    On the application's thread it only copies a few fields of a workflow or step span into a
    bounded queue (O(1), never raises); a daemon thread records them into the instruments
    every ``interval`` seconds, so histogram and counter updates — several microseconds each —
    never lengthen a step. :meth:`force_flush` records what is queued at once.

    Args:
        meter_provider: where the instruments live (default: the global meter provider).
        interval: seconds between recordings by the background thread.
        max_queue_size: spans held before new ones are counted in ``dropped`` instead.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        interval: float = 0.2,
        max_queue_size: int = 100_000,
    ) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter(attr.INSTRUMENTATION_NAME, __version__)
        buckets = list(DURATION_BUCKETS)
        self._run_duration = meter.create_histogram(
            RUN_DURATION,
            unit="s",
            description="Duration of finished workflow runs",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self._step_duration = meter.create_histogram(
            STEP_DURATION,
            unit="s",
            description="Duration of finished step attempts",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self._runs = meter.create_counter(
            RUNS, unit="{run}", description="Finished workflow runs by workflow and status"
        )
        self._active = meter.create_up_down_counter(
            ACTIVE_RUNS, unit="{run}", description="Workflow runs started and not yet finished"
        )
        self._names: dict[str, str] = {}  # run id -> workflow name, while the run is active
        self._label_cache: dict[tuple[str, ...], dict[str, str]] = {}
        self.errors = 0
        self.dropped = 0
        self._queue: deque[tuple[Any, ...]] = deque()
        self._max_queue_size = max_queue_size
        self._interval = interval
        self._lock = threading.Lock()  # one recorder at a time: the thread or force_flush
        self._stop = threading.Event()
        self._thread = self._start()
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _restart(this))

    # -- the application's thread ----------------------------------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Queue a started run (steps are measured when they end)."""
        try:
            attributes = span_attributes(span)
            if _RUN_ID in attributes and _STEP_NAME not in attributes:
                run_name = attributes.get(_RUN_NAME)
                self._put((True, attributes.get(_RUN_ID), run_name, span.name, 0, 0, None, None))
        except Exception:
            self._failed()

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a finished run or step as plain values (never the span or its attributes:
        a queued tuple holding a dict stays tracked by the garbage collector, and with the
        recording thread draining every ``interval`` they all reached its oldest generation)."""
        try:
            attributes = span_attributes(span)
            if _RUN_ID in attributes:
                get = attributes.get
                step = get(_STEP_NAME)
                status = get(_RUN_STATUS) if step is None else get(_STEP_STATUS)
                ended = (False, get(_RUN_ID), get(_RUN_NAME), span.name, span.start_time)
                self._put((*ended, span.end_time, step, status))
        except Exception:
            self._failed()

    def _put(self, item: tuple[Any, ...]) -> None:
        if len(self._queue) < self._max_queue_size:
            self._queue.append(item)
        else:
            self.dropped += 1

    # -- the recording thread ----------------------------------------------------------------
    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="flowtel-metrics", daemon=True)
        thread.start()
        return thread

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()

    def _drain(self) -> None:
        with self._lock:
            queue = self._queue
            while queue:
                try:
                    self._record(*queue.popleft())
                except Exception:
                    self._failed()

    def _record(
        self,
        started: bool,
        run_id: Any,
        run_name: Any,
        span_name: str,
        start_ns: int | None,
        end_ns: int | None,
        step: Any,
        status: Any,
    ) -> None:
        name = str(run_name or span_name)
        if started:
            self._names[str(run_id)] = name
            self._active.add(1, self._labels((name,)))
            return
        if start_ns is None or end_ns is None:
            return
        seconds = max(end_ns - start_ns, 0) / 1e9
        if step is not None:
            workflow = self._names.get(str(run_id), _UNKNOWN)
            key = (workflow, str(step), _UNKNOWN if status is None else str(status))
            self._step_duration.record(seconds, self._labels(key))
            return
        if self._names.pop(str(run_id), None) is not None:
            self._active.add(-1, self._labels((name,)))
        labels = self._labels((name, _UNKNOWN if status is None else str(status)))
        self._runs.add(1, labels)
        self._run_duration.record(seconds, labels)

    def _labels(self, key: tuple[str, ...]) -> dict[str, str]:
        """The attribute dict for *key* (workflow name; then status, or step name and status),
        built once per distinct key: their number is bounded by the low-cardinality names."""
        labels = self._label_cache.get(key)
        if labels is None:
            if len(self._label_cache) >= 10_000:
                self._label_cache.clear()
            names = _STEP_LABELS if len(key) == 3 else _RUN_LABELS[: len(key)]
            labels = self._label_cache[key] = dict(zip(names, key, strict=True))
        return labels

    def _failed(self) -> None:
        self.errors += 1
        if self.errors == 1:
            logger.exception("flowtel's metrics processor failed; the workflow is unaffected")

    def shutdown(self) -> None:
        """Record what is queued and stop the recording thread."""
        self._stop.set()
        self._drain()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Record everything queued so far into the instruments."""
        self._drain()
        return True


def _restart(ref: weakref.ref[WorkflowMetricsSpanProcessor]) -> None:
    processor = ref()
    if processor is not None:  # a forked child: fresh lock, queue and thread
        processor._lock = threading.Lock()
        processor._queue = deque()
        processor._stop = threading.Event()
        processor._thread = processor._start()


def _observer(
    stats: Callable[[], Mapping[str, Any]], key: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        value = stats().get(key)
        return [Observation(value)] if isinstance(value, int) else []

    return observe


def _lost_observer(
    stats: Callable[[], Mapping[str, Any]],
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def observe(options: CallbackOptions) -> Iterable[Observation]:
        values = stats()
        return [
            Observation(values[key], {"reason": reason})
            for key, reason in _LOSSES.items()
            if isinstance(values.get(key), int)
        ]

    return observe


def observe_writer(meter: Meter, stats: Callable[[], Mapping[str, Any]]) -> list[str]:
    """Register one observable instrument per integer counter in *stats*.

    ``queue_depth`` and ``active_runs`` become gauges; every other integer (batches and rows
    written, write errors, retries, drops, rows spooled ...) a monotonic counter, so counters
    the processor gains later are exported without a change here. What was lost (events
    dropped, step rows dropped, rows unwritten at shutdown) is also one counter, :data:`LOST`,
    with a ``reason`` attribute, so that one alert covers every kind of loss.

    Args:
        meter: the meter to create the instruments on.
        stats: returns the processor's health counters (``WorkflowHistorySpanProcessor.stats``).

    Returns:
        The names of the instruments created.
    """
    names = []
    for key, value in stats().items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        name = WRITER_PREFIX + key
        callbacks = [_observer(stats, key)]
        description = f"flowtel history writer: {key.replace('_', ' ')}"
        if key in _GAUGES:
            meter.create_observable_gauge(
                name, callbacks, unit=_GAUGES[key], description=description
            )
        else:
            meter.create_observable_counter(name, callbacks, unit="1", description=description)
        names.append(name)
    if any(name.removeprefix(WRITER_PREFIX) in _LOSSES for name in names):
        meter.create_observable_counter(
            LOST,
            [_lost_observer(stats)],
            unit="1",
            description="flowtel history: events and rows lost, by reason",
        )
        names.append(LOST)
    return names


def make_meter_provider(
    resource: Resource, settings: OTLPSettings, export_interval_millis: float | None = None
) -> MeterProvider:
    """A meter provider exporting over OTLP every *export_interval_millis*.

    The interval defaults to ``OTEL_METRIC_EXPORT_INTERVAL`` (the SDK's default: 60 s). The
    provider does not register its own exit hook: ``Flowtel.shutdown`` bounds its shutdown.
    """
    reader = PeriodicExportingMetricReader(
        settings.metric_exporter(), export_interval_millis=export_interval_millis
    )
    return MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)


def install_metrics(
    tracer_provider: TracerProvider,
    meter_provider: metrics.MeterProvider | None,
    stats: Callable[[], Mapping[str, Any]],
    resource: Resource,
    settings: OTLPSettings,
    export: bool,
    export_interval_millis: float | None = None,
) -> tuple[WorkflowMetricsSpanProcessor, MeterProvider | None]:
    """Add the metrics processor to *tracer_provider* and observe the writer's *stats*.

    Without a *meter_provider*, one exporting over OTLP is created and installed globally when
    *export* is on and no SDK provider is installed yet; otherwise the global one is used.

    Returns:
        The processor, and the meter provider created here (``None`` if none was).
    """
    created = None
    if meter_provider is None:
        current = metrics.get_meter_provider()
        if export and not isinstance(current, MeterProvider):
            created = make_meter_provider(resource, settings, export_interval_millis)
            metrics.set_meter_provider(created)
        meter_provider = created or metrics.get_meter_provider()
    processor = WorkflowMetricsSpanProcessor(meter_provider)
    tracer_provider.add_span_processor(processor)
    observe_writer(meter_provider.get_meter(attr.INSTRUMENTATION_NAME, __version__), stats)
    return processor, created
