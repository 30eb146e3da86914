"""``WorkflowHistorySpanProcessor``: workflow and step spans in, history rows out.

``on_start``/``on_end`` run on the application's thread; they copy a few fields into an event
tuple and append it to a bounded in-memory queue — O(1), no I/O, no lock, and no exception
ever escapes. A writer thread drains the queue, folds the events per run and commits them in
batches, or spools them to local disk while the database cannot take them, replays the spool
when it can and keeps the heartbeat of active runs (see :mod:`exporters.history.writer`). The caller
never waits: past ``spool_threshold`` queued events the writer spools what it drains, and only
past ``max_queue_size`` are events dropped (and counted). ``force_flush`` and ``shutdown``
honour their timeouts: past half of it the writer spools what is left instead of trying the
database. A forked child gets its own queue, writer, spool file and connection pool.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from sqlalchemy.engine import Engine

from exporters.history.capture import capture_end, capture_start
from exporters.history.writer import HistoryWriter
from exporters.spool.files import spool_directory
from instrumentation.recording import history_processor_started, history_processor_stopped

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

    Memory is bounded whatever the database does: at most *max_queue_size* queued events
    (about 300 bytes each for a typical step, so about 30 MB at the default), plus the active
    runs' state and a batch or two of rows in the writer; an outage of any length adds nothing
    more, since what the database cannot take goes to the spool.

    Args:
        engine: the SQLAlchemy engine of the history database (see ``make_engine``).
        service_name: stored in each run row's ``service_name``.
        create_tables: create the tables if they do not exist (by the writer thread, before
            its first write, so an unreachable database never fails the caller).
        max_queue_size: events held in memory at most; past it new ones are dropped (and
            counted in ``events_dropped``).
        max_batch_size: events folded into one write at most.
        spool_threshold: queue length past which the writer spools what it drains instead of
            writing it (default: 90 % of *max_queue_size*: with a healthy database a burst
            is written, not detoured through the disk; the spool takes over only near the cap).
        flush_interval: seconds the idle writer waits before looking at the queue again; a
            run's row is visible within about this long of its start.
        context_keys: the context keys stored in ``server_id`` and ``device_type``.
        trace_url_template: e.g. ``http://localhost:16686/trace/{trace_id}`` (default:
            ``FLOWTEL_TRACE_URL_TEMPLATE``), stored as the run's trace link.
        spool: keep what the database cannot take in a local spool.
        spool_dir: the directory holding one spool per database (default:
            ``FLOWTEL_SPOOL_DIR``, else beside the SQLite file, else the user's cache dir).
        spool_after: seconds of failed writes (retried with backoff) before spooling.
        heartbeat_interval: seconds between refreshes of the active runs' ``updated_at``.
        max_pending_steps: without a working spool, step rows kept in memory at most (the
            oldest are dropped past it, and counted in ``steps_dropped``).
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
        spool_threshold: int | None = None,
        spool: bool = True,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_after: float = 1.0,
        heartbeat_interval: float = 5.0,
        max_pending_steps: int = 20_000,
    ) -> None:
        if max_queue_size < 1 or max_batch_size < 1:
            raise ValueError("max_queue_size and max_batch_size must be at least 1")
        self.engine = engine
        self.spool_directory = spool_directory(engine.url, spool_dir) if spool else None
        self._writer_options: dict[str, Any] = {
            "create_tables": create_tables,
            "service_name": service_name,
            "context_keys": context_keys,
            "trace_url_template": trace_url_template
            if trace_url_template is not None
            else os.environ.get("FLOWTEL_TRACE_URL_TEMPLATE"),
            "spool_after": spool_after,
            "heartbeat_interval": heartbeat_interval,
            "max_pending_steps": max_pending_steps,
        }
        self._writer = self._make_writer()
        self._max_queue_size = max_queue_size
        self._spool_threshold = max(1, spool_threshold or max_queue_size * 9 // 10)
        self._max_batch_size = max_batch_size
        self._flush_interval = flush_interval
        self._queue: deque[Any] = deque()
        self._dropped = 0
        self._errors = 0
        self._shutdown = False
        self._hurry_at: float | None = None
        self._deadline = float("inf")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = self._start_thread()
        history_processor_started()  # workflows no longer warn that nothing records them
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
        """Write everything queued so far; False if not all of it committed in time.

        Returns within *timeout_millis*. A failed commit is retried (with backoff) until the
        database has failed for ``spool_after`` seconds or half of the timeout has passed; then
        what is left is spooled (and False returned).
        """
        if not self._thread.is_alive():
            return not self._queue and not self._writer.has_pending
        timeout = max(timeout_millis, 0) / 1000
        self._hurry_at = min(self._hurry_at or float("inf"), time.monotonic() + timeout / 2)
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout) and marker.ok

    def shutdown(self, timeout_millis: int = 30_000) -> bool:  # type: ignore[override]
        """Flush (within *timeout_millis*), stop the writer thread and release the engine."""
        if self._shutdown:
            return True
        deadline = time.monotonic() + max(timeout_millis, 0) / 1000
        self._deadline = deadline - max(timeout_millis, 0) / 10_000  # leave time to spool
        self._hurry_at = time.monotonic() + max(timeout_millis, 0) / 2000
        flushed = self.force_flush(timeout_millis)
        self._shutdown = True
        history_processor_stopped()
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive():
            self.engine.dispose()
        return flushed

    @property
    def stats(self) -> dict[str, int | str | None]:
        """Counters (ints that only grow, but ``queue_depth``/``active_runs``) and state."""
        writer = self._writer
        stats: dict[str, int | str | None] = {
            "queue_depth": len(self._queue),
            "events_dropped": self._dropped,
            "callback_errors": self._errors,
            "active_runs": writer.active_runs,
        }
        stats.update(dataclasses.asdict(writer.stats))
        stats["writer_state"] = writer.health.state
        return stats

    # -- the writer thread -----------------------------------------------------------------
    def _start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="flowtel-history-writer", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            self._writer.prepare()
            self._loop()
        except Exception:  # pragma: no cover - last resort: never die silently
            logger.exception("flowtel's history writer stopped unexpectedly")

    def _loop(self) -> None:
        queue, writer, batch = self._queue, self._writer, self._max_batch_size
        waiting: list[_FlushMarker] = []
        while True:
            writer.collect()
            overloaded = len(queue) >= self._spool_threshold
            hurry = self._hurry_at is not None and time.monotonic() >= self._hurry_at
            if not waiting and (overloaded or hurry or writer.db.idle):  # one busy thread
                waiting = self._drain_into(writer, batch * (4 if overloaded else 1))
            writer.step(urgent=bool(waiting), spool_only=overloaded, hurry=hurry)
            # A flush is answered once its rows are committed — those spooled because the
            # queue overflowed included: with the database healthy they are replayed first —
            # or, at the deadline, with whatever is left spooled.
            replaying = writer.unreplayed and writer.health.healthy
            if waiting and ((writer.settled and not replaying) or hurry):
                ok = writer.settled and writer.health.healthy and not writer.unreplayed
                for marker in waiting:
                    marker.ok = ok
                    marker.done.set()
                waiting = []
                if not self._shutdown:
                    self._hurry_at = None
            writer.maintain(idle=len(queue) < batch and (not waiting or writer.settled))
            if self._stop.is_set() and not queue and not waiting:
                writer.finish(self._deadline)
                return
            if waiting or not queue or not (writer.db.idle or overloaded or hurry):
                self._wake.wait(self._flush_interval)
                self._wake.clear()

    def _drain_into(self, writer: HistoryWriter, limit: int) -> list[_FlushMarker]:
        queue = self._queue
        batch: list[Any] = []
        markers: list[_FlushMarker] = []
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

    def _make_writer(self) -> HistoryWriter:
        return HistoryWriter(
            self.engine,
            spool_directory=self.spool_directory,
            notify=lambda: self._wake.set(),
            **self._writer_options,
        )

    def _after_fork_in_child(self) -> None:
        """A forked child gets a fresh queue, writer thread, spool file and connection pool."""
        self._queue = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._hurry_at = None
        self.engine.dispose(close=False)
        self._writer.forget_files()  # the parent keeps its spool file and its lock
        self._writer = self._make_writer()
        if not self._shutdown:
            self._thread = self._start_thread()


def _after_fork(ref: weakref.ref[WorkflowHistorySpanProcessor]) -> None:
    processor = ref()
    if processor is not None:
        processor._after_fork_in_child()
