"""``WorkflowHistorySpanProcessor``: workflow and step spans in, history rows out.

A thin ``SpanProcessor`` facade. ``on_start``/``on_end`` run on the application's thread; they
copy a few fields into an event tuple (:mod:`.capture`) and hand it to the writer's queue — O(1),
no I/O, no lock, and no exception ever escapes; under ``durability="run"``/``"step"`` a durable
point then waits, at most ``durability_timeout`` seconds, until its rows are committed or
spooled. Everything after the queue (draining, folding,
committing, spooling, replaying, heart-beating, answering flushes) is the writer's, in one loop
with named states (see :mod:`exporters.history.writer`). ``force_flush`` and ``shutdown`` honour
their timeouts. A forked child gets its own queue, writer, spool file and connection pool.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from sqlalchemy.engine import Engine

from exporters.history.capture import capture_end, capture_start, ends_step, is_run_event
from exporters.history.tracelink import check_trace_url_template
from exporters.history.writer import HistoryWriter
from exporters.spool.files import spool_directory
from instrumentation.recording import history_processor_started, history_processor_stopped

__all__ = ["DURABILITY_LEVELS", "WorkflowHistorySpanProcessor"]

DURABILITY_LEVELS = ("async", "run", "step")
"""``async``: the caller never waits (a crash loses what the writer has not committed yet);
``run``: a run's start and end return once committed or fsync'd to the spool; ``step``: each
step's end too. Every wait is bounded by ``durability_timeout``."""

logger = logging.getLogger("flowtel.processor")


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
        max_queue_size: events held in memory at most; past it a step event is spooled on the
            caller's thread (``events_overflowed``), or without a writable spool dropped (and
            counted in ``events_dropped``); a run's start and end are always queued.
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
        durability: ``"async"`` (the caller never waits), ``"run"`` (a run's start and end
            return once their row is committed or fsync'd to the spool) or ``"step"`` (each
            step's end too), see :data:`DURABILITY_LEVELS` (default: ``FLOWTEL_DURABILITY``,
            else ``"async"``).
        durability_timeout: seconds a durable start or end waits at most; past it the
            workflow goes on (counted in ``durable_timeouts``), never an exception.
        startup: called once on the writer's database thread before any other database call
            (retried with the next one while it raises), so that slow start-up work — e.g.
            replaying the spool of earlier processes — never blocks the caller; not called
            again in a forked child.
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
        durability: str | None = None,
        durability_timeout: float = 5.0,
        startup: Callable[[], object] | None = None,
    ) -> None:
        if max_queue_size < 1 or max_batch_size < 1:
            raise ValueError("max_queue_size and max_batch_size must be at least 1")
        durability = durability or os.environ.get("FLOWTEL_DURABILITY") or "async"
        if durability not in DURABILITY_LEVELS:
            raise ValueError(
                f"durability={durability!r} is not one of {', '.join(DURABILITY_LEVELS)}"
            )
        template = _trace_url_template(trace_url_template)
        check_trace_url_template(template)
        self.durability = durability
        self._durable_runs = durability != "async"
        self._durable_steps = durability == "step"
        self._durability_timeout = durability_timeout
        self.engine = engine
        self.spool_directory = spool_directory(engine.url, spool_dir) if spool else None
        self._writer_options: dict[str, Any] = {
            "create_tables": create_tables,
            "service_name": service_name,
            "context_keys": context_keys,
            "trace_url_template": template,
            "spool_after": spool_after,
            "heartbeat_interval": heartbeat_interval,
            "max_pending_steps": max_pending_steps,
            "max_queue_size": max_queue_size,
            "max_batch_size": max_batch_size,
            "spool_threshold": spool_threshold,
            "flush_interval": flush_interval,
        }
        self._errors = 0
        self._shutdown = False
        self._writer = self._make_writer(startup)
        self._writer.start()
        history_processor_started()  # workflows no longer warn that nothing records them
        this = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(this))

    @staticmethod
    def check_settings(options: dict[str, Any]) -> None:
        """Raise ``ValueError`` saying what to write instead if *options* (the constructor's
        keyword arguments) or the environment hold a setting the writer could not use: today
        a ``trace_url_template`` / ``FLOWTEL_TRACE_URL_TEMPLATE`` naming other fields than
        ``{trace_id}`` and ``{span_id}``. ``configure()`` calls it before connecting."""
        check_trace_url_template(_trace_url_template(options.get("trace_url_template")))

    # -- the application's thread ----------------------------------------------------------
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Queue the start of a workflow or step span (never raises; waits only for a durable
        run start, at most ``durability_timeout`` seconds)."""
        try:
            if self._shutdown:
                return
            event = capture_start(span)
            if event is not None:
                self._writer.put(event)
                if self._durable_runs and is_run_event(event):
                    self._writer.wait_durable(self._durability_timeout)
        except Exception:
            self._callback_failed()

    def on_end(self, span: ReadableSpan) -> None:
        """Queue the end of a workflow or step span (never raises; waits only for a durable run
        or step end, at most ``durability_timeout`` seconds)."""
        try:
            if self._shutdown:
                return
            event = capture_end(span)
            if event is not None:
                self._writer.put(event)
                if (self._durable_runs and is_run_event(event)) or (
                    self._durable_steps and ends_step(event)
                ):
                    self._writer.wait_durable(self._durability_timeout)
        except Exception:
            self._callback_failed()

    def _callback_failed(self) -> None:
        self._errors += 1
        if self._errors == 1:
            logger.exception("flowtel's span processor failed; the workflow is unaffected")

    # -- flushing and shutdown ------------------------------------------------------------
    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write everything queued so far; False if not all of it committed in time.

        Returns within *timeout_millis*. A failed commit is retried (with backoff) until the
        database has failed for ``spool_after`` seconds or half of the timeout has passed; then
        what is left is spooled, and the flush waits (up to its timeout) for the replay to
        commit it once the database answers again. False also when events were dropped since
        the last flush (the queue was full).
        """
        return self._writer.flush(max(timeout_millis, 0) / 1000)

    def shutdown(self, timeout_millis: int = 30_000) -> bool:  # type: ignore[override]
        """Flush (within *timeout_millis*), stop the writer thread and release the engine."""
        if self._shutdown:
            return True
        history_processor_stopped()
        flushed = self._writer.shutdown(max(timeout_millis, 0) / 1000, flushed=self._stop_queueing)
        if not self._writer.alive:
            self.engine.dispose()
        return flushed

    def _stop_queueing(self) -> None:
        self._shutdown = True

    @property
    def writer(self) -> HistoryWriter:
        """The writer that owns everything after the queue."""
        return self._writer

    @property
    def stats(self) -> dict[str, int | str | None]:
        """Counters (ints that only grow, but ``queue_depth``/``active_runs``) and state."""
        stats = self._writer.snapshot()
        stats["callback_errors"] = self._errors
        return stats

    def _make_writer(self, startup: Callable[[], object] | None = None) -> HistoryWriter:
        return HistoryWriter(
            self.engine,
            spool_directory=self.spool_directory,
            startup=startup,
            **self._writer_options,
        )

    def _after_fork_in_child(self) -> None:
        """A forked child gets a fresh queue, writer thread, spool file and connection pool."""
        self.engine.dispose(close=False)
        self._writer.forget_files()  # the parent keeps its spool file and its lock
        self._writer = self._make_writer()
        if not self._shutdown:
            self._writer.start()


def _trace_url_template(given: str | None) -> str | None:
    return given if given is not None else os.environ.get("FLOWTEL_TRACE_URL_TEMPLATE")


def _after_fork(ref: weakref.ref[WorkflowHistorySpanProcessor]) -> None:
    processor = ref()
    if processor is not None:
        processor._after_fork_in_child()
