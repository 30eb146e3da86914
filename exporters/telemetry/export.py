"""The span export that counts what it loses: the SDK's batch processor, with every span accounted.

The SDK's ``BatchSpanProcessor`` holds ended, sampled spans in a bounded queue
(``OTEL_BSP_MAX_QUEUE_SIZE``, 2048 by default) and sends them in batches. It loses spans in three
ways and only logs them: a full queue evicts its oldest span ("Queue full, dropping Span."), a
batch whose export fails is not retried (the exporter's own retries are the only ones), and a
span that ends after shutdown is ignored. :class:`CountedSpanExport` is that processor with
each span it accepts counted exactly once as it leaves: *exported*, *failed* (the exporter
answered failure or raised) or *dropped* (evicted, ended after shutdown, or still queued when
shutdown gave up); until then it is *queued*. Spans that carry ``workflow.run_id`` are counted
apart as well: in collector mode they are the history, and a lost one is a missing row.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from exporters.sdk_internals import replace_batch_queue, span_attributes
from instrumentation import attributes as attr

__all__ = ["CountedSpanExport"]

logger = logging.getLogger("flowtel.otlp")

_KINDS = ("exported", "failed", "dropped")


class _Counts:
    """Spans and workflow spans per outcome, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = dict.fromkeys(_KINDS, 0)
        self.workflow = dict.fromkeys(_KINDS, 0)

    def add(self, kind: str, spans: Sequence[Any]) -> None:
        workflow = sum(1 for span in spans if attr.RUN_ID in span_attributes(span))
        with self.lock:
            self.spans[kind] += len(spans)
            self.workflow[kind] += workflow


class _CountingQueue(deque[ReadableSpan]):
    """The batcher's queue: evicting the oldest span when full counts it as dropped.

    The SDK adds with ``appendleft`` (application threads) and takes with ``pop`` (its worker);
    both hold one lock here, so "full" is decided exactly, not raced by a concurrent ``pop``.
    """

    def __init__(self, maxlen: int, counts: _Counts) -> None:
        super().__init__((), maxlen)
        self._lock = threading.Lock()
        self._counts = counts

    def appendleft(self, span: ReadableSpan) -> None:
        with self._lock:
            if len(self) == self.maxlen:
                self._counts.add("dropped", [self[-1]])
            super().appendleft(span)

    def pop(self) -> ReadableSpan:  # type: ignore[override]  # deque's pop takes no index
        with self._lock:
            return super().pop()

    def after_fork_in_child(self) -> None:
        """A fresh lock: the parent's may have been held by its worker at the fork."""
        self._lock = threading.Lock()

    def take_all(self) -> list[ReadableSpan]:
        """Empty the queue, returning what it held."""
        with self._lock:
            spans = list(self)
            self.clear()
            return spans


class _CountingExporter(SpanExporter):
    """Passes batches to the real exporter and counts its answers (the SDK does not)."""

    def __init__(self, inner: SpanExporter, counts: _Counts) -> None:
        self.inner = inner
        self._counts = counts

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            logger.exception("flowtel: the span exporter raised; %d spans are lost", len(spans))
            result = SpanExportResult.FAILURE
        self._counts.add("exported" if result is SpanExportResult.SUCCESS else "failed", spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountedSpanExport(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` that counts every span it exported, failed or dropped.

    Args:
        span_exporter: the real exporter (normally OTLP).
        **options: the ``BatchSpanProcessor``'s (``max_queue_size`` ...; the ``OTEL_BSP_*``
            variables otherwise).
    """

    def __init__(self, span_exporter: SpanExporter, **options: Any) -> None:
        self._counts = _Counts()
        self.inner_exporter = span_exporter
        self._counting = _CountingExporter(span_exporter, self._counts)
        super().__init__(self._counting, **options)
        self._gate = threading.Lock()
        self._stopped = False
        counts = self._counts
        self._queue = replace_batch_queue(self, lambda size: _CountingQueue(size, counts))
        if self._queue is None:
            logger.warning(
                "flowtel cannot count the spans this OpenTelemetry SDK's batch processor drops "
                "when its queue is full (its internals changed); failed exports are still "
                "counted. Install the SDK version pyproject.toml names."
            )
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def _after_fork_in_child(self) -> None:
        """A forked child counts its own spans, with locks no parent thread can hold."""
        self._counts = _Counts()
        self._gate = threading.Lock()
        if isinstance(self._queue, _CountingQueue):
            self._queue.after_fork_in_child()
            self._queue._counts = self._counts
        self._counting._counts = self._counts

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a sampled span for export; after shutdown, count it as dropped."""
        with self._gate:
            if not self._stopped:
                super().on_end(span)
                return
        if span.context is not None and span.context.trace_flags.sampled:
            self._counts.add("dropped", [span])

    def shutdown(self) -> None:
        """Export what is queued (the SDK bounds it at about 30 s), then count what is left."""
        with self._gate:
            self._stopped = True
        super().shutdown()  # type: ignore[no-untyped-call]
        if isinstance(self._queue, _CountingQueue):
            self._counts.add("dropped", self._queue.take_all())

    @property
    def queued(self) -> int:
        """Spans waiting in the queue now."""
        return len(self._queue) if self._queue is not None else 0

    def counts(self) -> dict[str, int]:
        """``spans_exported``, ``spans_failed``, ``spans_dropped``, ``spans_queued``, and
        ``workflow_spans_exported``/``_failed``/``_dropped`` for spans with a run id."""
        queued = self.queued
        with self._counts.lock:
            spans, workflow = dict(self._counts.spans), dict(self._counts.workflow)
        report = {f"spans_{kind}": spans[kind] for kind in _KINDS}
        report |= {f"workflow_spans_{kind}": workflow[kind] for kind in _KINDS}
        report["spans_queued"] = queued
        return report


def _after_fork(ref: weakref.ref[CountedSpanExport]) -> None:
    export = ref()
    if export is not None:
        export._after_fork_in_child()
