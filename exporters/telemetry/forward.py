"""Collector mode on the worker: every workflow span reaches the collector, runs say "started",
and what the span export loses is counted.

``configure(history="collector")`` (or ``FLOWTEL_HISTORY=collector``) opens no database: history
is written by ``flowtel ingest`` behind the collector. :class:`HistoryForwarder` stands where the
history processor would and feeds the span export's ``BatchSpanProcessor`` two kinds of copies
(named in :mod:`instrumentation.attributes`):

* a **start signal** when a workflow (run) span starts: a zero-length copy with the same trace
  and span id, the start attributes and ``flowtel.signal = "start"``. It is queued at the run's
  start, ahead of every step of the run, so ingest writes the ``running`` row before the first
  step ends (within the batch processor's delay, ``OTEL_BSP_SCHEDULE_DELAY``, plus the
  collector's). A zero-length span needs no new signal type, no logs pipeline and no protocol
  beyond OTLP traces, which every collector and SDK speaks.
* a **history-only** copy of each workflow span the sampler did not sample (the
  ``AuditSampler`` records them, the batch processor would drop them), flagged
  ``flowtel.history_only = true`` and sampled, so the exporter sends it.

The collector's trace pipeline drops both kinds before the tracing backend, which thus sees
exactly what the sampler chose; its history pipeline sends them all to ingest. Nothing is
buffered here: ``force_flush``/``shutdown`` are the span export's. In this mode the span export
*is* the history, so :attr:`HistoryForwarder.stats` reports the workflow spans it lost, as
:class:`~exporters.telemetry.export.CountedSpanExport` counts them from the exporter's side:
``events_dropped`` (evicted from its full queue, or ended after shutdown) and ``export_failed``
(the collector, or ingest, did not take them). The forwarder also counts as a history processor
for ``instrumentation.recording``, so a worker in collector mode is not told that nothing
records its workflows.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from exporters.sdk_internals import span_attributes
from exporters.telemetry.export import CountedSpanExport
from instrumentation import attributes as attr
from instrumentation.recording import history_processor_started, history_processor_stopped

__all__ = ["HistoryForwarder"]

logger = logging.getLogger("flowtel.forward")


class HistoryForwarder(SpanProcessor):
    """Sends start signals and unsampled workflow spans through *export* (the OTLP span export,
    which the tracer provider is also given, after this processor)."""

    def __init__(self, export: CountedSpanExport) -> None:
        self.export = export
        self.signals_sent = 0
        self.history_only_sent = 0
        self.callback_errors = 0
        self._stopped = False
        history_processor_started()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Send the start signal of a workflow (run) span (never raises)."""
        try:
            attributes = span_attributes(span)
            if attr.RUN_ID not in attributes or attr.STEP_NAME in attributes:
                return
            signal = _copy(span, {**attributes, attr.SIGNAL: attr.SIGNAL_START}, start_only=True)
            self.export.on_end(signal)
            self.signals_sent += 1
        except Exception:
            self._failed()

    def on_end(self, span: ReadableSpan) -> None:
        """Send an unsampled workflow span anyway, flagged history-only (never raises)."""
        try:
            if span.context is None or span.context.trace_flags.sampled:
                return  # the export sends it itself
            attributes = span_attributes(span)
            if attr.RUN_ID not in attributes:
                return
            self.export.on_end(_copy(span, {**attributes, attr.HISTORY_ONLY: True}))
            self.history_only_sent += 1
        except Exception:
            self._failed()

    def _failed(self) -> None:
        self.callback_errors += 1
        if self.callback_errors == 1:
            logger.exception(
                "flowtel's collector-mode forwarder failed; the workflow is unaffected"
            )

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Nothing is held here (the export flushes what it queued)."""
        return True

    def shutdown(self, timeout_millis: int = 30_000) -> bool:  # type: ignore[override]
        """Stop counting as a history processor (the span export is shut down on its own)."""
        if not self._stopped:
            self._stopped = True
            history_processor_stopped()
        return True

    @property
    def stats(self) -> dict[str, int | str | None]:
        """Counters, in the shape of the history processor's ``stats``: ``queue_depth`` (spans
        waiting in the export's queue), ``events_dropped`` and ``export_failed`` (workflow spans
        lost at the queue or after shutdown, and in failed exports)."""
        counts = self.export.counts()
        return {
            "queue_depth": counts["spans_queued"],
            "events_dropped": counts["workflow_spans_dropped"],
            "export_failed": counts["workflow_spans_failed"],
            "callback_errors": self.callback_errors,
            "active_runs": 0,
            "signals_sent": self.signals_sent,
            "history_only_sent": self.history_only_sent,
            "writer_state": "collector",
        }


def _copy(span: Any, attributes: dict[str, Any], *, start_only: bool = False) -> ReadableSpan:
    context: SpanContext = span.context
    flags = TraceFlags(context.trace_flags | TraceFlags.SAMPLED)
    sampled = SpanContext(context.trace_id, context.span_id, False, flags, context.trace_state)
    return ReadableSpan(
        name=span.name,
        context=sampled,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=() if start_only else span.events,
        links=span.links,
        kind=span.kind,
        status=Status(StatusCode.UNSET) if start_only else span.status,
        start_time=span.start_time,
        end_time=span.start_time if start_only else span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
