"""``WorkflowHistorySpanProcessor``: workflow and step spans in, history rows out.

``on_start``/``on_end`` run on the application's thread; they copy a few fields into an event
tuple and append it to a bounded in-memory queue — O(1), no I/O, no lock, and no exception
ever escapes. A writer thread (instrumentation suppressed, so its own SQL is never traced)
drains the queue, folds the events per run and commits them in batches (see
:mod:`exporters.writer`). ``force_flush`` and ``shutdown`` honour their timeouts. When the
queue is full new events are counted as dropped and the first drop is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from sqlalchemy.engine import Engine

from .events import capture_end, capture_start
from .writer import HistoryWriter, WriterStats

__all__ = ["WorkflowHistorySpanProcessor"]

logger = logging.getLogger("flowtel.processor")


class _FlushMarker:
    """Queued by ``force_flush``; set once everything queued before it was handled."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class WorkflowHistorySpanProcessor(SpanProcessor):
    """Writes one ``workflow_history`` row per run and one step row per attempt.

    Args:
        engine: the SQLAlchemy engine of the history database (see ``make_engine``).
        service_name: stored in each run row's ``service_name``.
        create_tables: create the tables if they do not exist (by the writer thread, before
            its first write, so an unreachable database never fails the caller).
        max_queue_size: events held in memory before new ones are dropped (and counted).
        max_batch_size: events folded into one write at most.
        flush_interval: seconds the idle writer waits before looking at the queue again; a
            run's row is visible within about this long of its start.
        context_keys: the context keys stored in ``server_id`` and ``device_type``.
        trace_url_template: e.g. ``http://localhost:16686/trace/{trace_id}`` (default:
            ``FLOWTEL_TRACE_URL_TEMPLATE``), stored as the run's trace link.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        service_name: str | None = None,
        create_tables: bool = True,
        max_queue_size: int = 100_000,
        max_batch_size: int = 5_000,
        flush_interval: float = 0.05,
        context_keys: tuple[str, str] = ("server_id", "device_type"),
        trace_url_template: str | None = None,
    ) -> None:
        if max_queue_size < 1 or max_batch_size < 1:
            raise ValueError("max_queue_size and max_batch_size must be at least 1")
        self.engine = engine
        self._writer = HistoryWriter(
            engine,
            create_tables=create_tables,
            service_name=service_name,
            context_keys=context_keys,
            trace_url_template=trace_url_template
            if trace_url_template is not None
            else os.environ.get("FLOWTEL_TRACE_URL_TEMPLATE"),
        )
        self._max_queue_size = max_queue_size
        self._max_batch_size = max_batch_size
        self._flush_interval = flush_interval
        self._queue: deque[Any] = deque()
        self._dropped = 0
        self._errors = 0
        self._shutdown = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = self._start_thread()
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(this))

    # -- the application's thread ----------------------------------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Queue the start of a workflow or step span (never raises, never blocks)."""
        try:
            if self._shutdown:
                return
            event = capture_start(span)
            if event is not None:
                self._enqueue(event)
        except Exception:
            self._callback_failed()

    def on_end(self, span: ReadableSpan) -> None:
        """Queue the end of a workflow or step span (never raises, never blocks)."""
        try:
            if self._shutdown:
                return
            event = capture_end(span)
            if event is not None:
                self._enqueue(event)
        except Exception:
            self._callback_failed()

    def _enqueue(self, event: Any) -> None:
        queue = self._queue
        if len(queue) < self._max_queue_size:
            queue.append(event)
            return
        self._dropped += 1
        if self._dropped == 1:
            logger.error(
                "flowtel's history queue is full (%d events): dropping new events",
                self._max_queue_size,
            )

    def _callback_failed(self) -> None:
        self._errors += 1
        if self._errors == 1:
            logger.exception("flowtel's span processor failed; the workflow is unaffected")

    # -- flushing and shutdown ------------------------------------------------------------
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write everything queued so far; False if not all of it committed in time."""
        if not self._thread.is_alive():
            return not self._queue and not self._writer.has_pending
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        if not marker.done.wait(max(timeout_millis, 0) / 1000):
            return False
        return marker.ok

    def shutdown(self, timeout_millis: int = 30_000) -> bool:  # type: ignore[override]
        """Flush (within *timeout_millis*), stop the writer thread and release the engine."""
        if self._shutdown:
            return True
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        flushed = self.force_flush(timeout_millis)
        self._shutdown = True
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self.engine.dispose()
        return flushed

    @property
    def stats(self) -> dict[str, int | str | None]:
        """Health counters: queue depth, drops, batches and rows written, write errors."""
        writer: WriterStats = self._writer.stats
        return {
            "queue_depth": len(self._queue),
            "events_dropped": self._dropped,
            "callback_errors": self._errors,
            "active_runs": self._writer.active_runs,
            "batches_written": writer.batches_written,
            "runs_written": writer.runs_written,
            "steps_written": writer.steps_written,
            "write_errors": writer.write_errors,
            "retries": writer.retries,
            "steps_dropped": writer.steps_dropped,
            "last_error": writer.last_error,
        }

    # -- the writer thread -----------------------------------------------------------------
    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="flowtel-history-writer", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        token = otel_context.attach(
            otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        try:
            self._writer.prepare()
            self._loop()
        except Exception:  # pragma: no cover - last resort: never die silently
            logger.exception("flowtel's history writer stopped unexpectedly")
        finally:
            otel_context.detach(token)

    def _loop(self) -> None:
        queue, writer = self._queue, self._writer
        while True:
            markers = self._drain_into(writer)
            if writer.has_pending and (markers or writer.ready()):
                writer.write()
            if markers:
                ok = not writer.has_pending
                for marker in markers:
                    marker.ok = ok
                    marker.done.set()
            if self._stop.is_set() and not queue:
                return
            if not queue:
                self._wake.wait(self._flush_interval)
                self._wake.clear()

    def _drain_into(self, writer: HistoryWriter) -> list[_FlushMarker]:
        queue = self._queue
        batch: list[Any] = []
        markers: list[_FlushMarker] = []
        limit = self._max_batch_size
        popleft = queue.popleft
        while queue and len(batch) < limit:
            item = popleft()
            if isinstance(item, _FlushMarker):
                markers.append(item)
                break  # answer the marker with everything before it written
            batch.append(item)
        if batch:
            writer.fold(batch)
        return markers

    def _after_fork_in_child(self) -> None:
        """A forked child gets a fresh queue, writer thread and connection pool."""
        self._queue = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.engine.dispose(close=False)
        self._writer = HistoryWriter(
            self.engine,
            create_tables=self._writer._create_tables,
            service_name=self._writer._service_name,
            context_keys=self._writer._context_keys,
            trace_url_template=self._writer._trace_url_template,
        )
        if not self._shutdown:
            self._thread = self._start_thread()


def _after_fork(ref: weakref.ref[WorkflowHistorySpanProcessor]) -> None:
    processor = ref()
    if processor is not None:
        processor._after_fork_in_child()
