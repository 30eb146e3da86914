"""The history writer: the one owner of everything after the queue, in one loop.

The processor only captures events and hands them to :meth:`HistoryWriter.put`. The writer holds the
queue and runs the loop on its own thread; each turn it collects the outcome of the last database
call, drains a batch, folds it into run state (:mod:`.pending`, :mod:`.rows`), then commits it,
spools it or keeps it for a retry, answers waiting flushes, and between batches probes, heart-beats
or replays a spool chunk. Its states are the :class:`~.health.WriterState` enum; :mod:`.health`
tracks the database's side of them (backoff, logging each change once) and :mod:`.dbthread` runs
each database call on a thread of its own, so the writer never waits on the database. An exception
in a turn costs that turn (counted in ``loop_errors``), never the thread; if the thread ends anyway
the state is ``DEAD``.

Each batch is one transaction with one multi-row upsert for runs and one for steps (on PostgreSQL
both in one statement). A failed batch goes back to the pending rows and is retried with exponential
backoff while new events keep being folded in. Pending rows go to the local spool once the database
has failed for ``spool_after`` seconds (while a durable wait is pending, a call that has not
answered within that time counts as failed, and so does one a durable wait gave up on), at once when
it refuses the rows themselves (the replay then isolates the refused ones), when the queue is over
its threshold, and when a flush's or durable wait's own deadline is near (then the batch in flight
too). Each flush and durable wait is a marker in the queue with its own deadline (:mod:`.waits`);
markers never stop the drain, and each is answered as soon as its events are committed (a flush) or
committed or spooled (a durable wait), or at its deadline. While the database is down every batch
follows to the spool, and each attempt (with the next batch, or ``SELECT 1`` when idle) probes for
its return; then the spool is replayed a chunk at a time between batches. An outage of any length
thus costs the active runs' state plus a batch or two; without a working spool (it is tried again
with every batch), at most ``max_pending_steps`` step rows are kept (the oldest are dropped, and
counted). While healthy, the writer refreshes the heartbeat of its active runs every
``heartbeat_interval`` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from exporters.db.bulk import bulk_upsert_rows, one_statement_batches
from exporters.db.check import prepare_schema
from exporters.db.driver_errors import refused
from exporters.db.heartbeat import heartbeat
from exporters.errors import SpoolDirectoryError
from exporters.history.capture import ends_run, is_run_event, run_id_of
from exporters.history.dbthread import DatabaseThread
from exporters.history.health import WriterHealth, WriterState, WriterStats
from exporters.history.overflow import OverflowSpools
from exporters.history.pending import PendingRows, Rows
from exporters.history.waits import WaitMarker, Waits
from exporters.spool.files import Spool, fallback_spool_directory, spool_key
from exporters.spool.replay import Replayer

__all__ = ["HistoryWriter", "WriterState", "WriterStats"]

logger = logging.getLogger("flowtel.writer")

_INHERITED_CONNECTIONS: list[Connection] = []
"""Connections a forked child inherited from its parent's writer: never closed nor collected."""


class HistoryWriter:
    """Turns queued events into rows and commits them, or spools them.

    :meth:`put`, :meth:`flush` and :meth:`shutdown` are called from any thread; everything else
    runs on the writer's thread (started by :meth:`start`), or on the caller's for tools and
    benchmarks that drive it by hand with :meth:`fold` and :meth:`write`.

    Args:
        engine: the history database.
        create_tables: prepare the schema before the first write (on the database thread).
        spool_directory: where rows go while the database cannot take them, and are
            replayed from (``None``: keep them in memory, dropping the oldest step rows past
            *max_pending_steps*).
        spool_after: seconds of failed writes before rows go to the spool.
        heartbeat_interval: seconds between refreshes of the active runs' ``updated_at``.
        max_pending_steps: step rows kept in memory without a spool, or a working one.
        max_queue_size: events held in the queue at most.
        max_batch_size: events folded into one write at most.
        spool_threshold: queue length past which drained events are spooled, not committed.
        flush_interval: seconds the idle writer waits before looking at the queue again.
        startup: called once on the database thread before any other database call (retried
            with the next call if it raises), e.g. to replay a spool left by earlier processes.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        create_tables: bool = True,
        service_name: str | None = None,
        context_keys: tuple[str, str] = ("server_id", "device_type"),
        trace_url_template: str | None = None,
        spool_directory: Path | None = None,
        spool_after: float = 1.0,
        heartbeat_interval: float = 5.0,
        max_pending_steps: int = 20_000,
        max_backoff: float = 5.0,
        max_queue_size: int = 100_000,
        max_batch_size: int = 5_000,
        spool_threshold: int | None = None,
        flush_interval: float = 0.05,
        startup: Callable[[], object] | None = None,
    ) -> None:
        if max_queue_size < 1 or max_batch_size < 1:
            raise ValueError("max_queue_size and max_batch_size must be at least 1")
        self.engine = engine
        self._connection: Connection | None = None  # kept between batches by _commit
        self.stats = WriterStats()
        self.health = WriterHealth(engine.url, self.stats, max_backoff)
        self.queue: deque[Any] = deque()
        self.events_dropped = 0
        self.runs_with_lost_events = 0
        self.lost_runs: set[str] = set()  # added to by the application's threads
        self._drops_logged = 0
        self._drops_logged_at = 0.0
        self._wake = threading.Event()
        self.db = DatabaseThread(self._wake.set)
        self.pending = PendingRows(service_name, trace_url_template, context_keys)
        key = spool_key(engine.url)
        fallback = fallback_spool_directory(key) if spool_directory else None
        if fallback == spool_directory:
            fallback = None
        self.spool = Spool(spool_directory, key) if spool_directory else None
        # past the queue's cap, step events are spooled on the application's thread
        self.overflow = OverflowSpools(spool_directory, key) if spool_directory else None
        # tried when the spool cannot be written (disk full, read-only, a file in the way)
        self.fallback = (
            Spool(fallback, key, checked_from=fallback.parent.parent) if fallback else None
        )
        self.replayers = [Replayer(d, key) for d in (spool_directory, fallback) if d]
        self.unreplayed = False  # rows this writer spooled that were not replayed yet
        self._create_tables = create_tables
        self._startup = startup
        self._spool_after = spool_after
        self._heartbeat_interval = heartbeat_interval
        self._max_pending_steps = max_pending_steps
        self._max_queue_size = max_queue_size
        self._max_batch_size = max_batch_size
        self._spool_threshold = max(1, spool_threshold or max_queue_size * 9 // 10)
        self._high_water = max(1, min(self._spool_threshold, max_queue_size) // 2)
        self._flush_interval = flush_interval
        self._spool_broken = False
        self._on_fallback = False
        self._steps_drop_logged = False
        self._refused: set[Path] = set()  # spool directories not private to this user
        self._replay_due = bool(self.replayers)
        self._next_beat = time.monotonic() + heartbeat_interval
        self.waits = Waits()
        self._hung = False  # the call in flight is counted as failed
        self._loop_errors_logged_at = 0.0
        self._deadline = float("inf")
        self._stop = threading.Event()
        self._stopped = False
        self._finished = False  # the loop ended after a shutdown
        self._died: BaseException | None = None  # the loop ended any other way
        self._dead_logged = False
        self._thread: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------------
    def put(self, event: Any) -> bool:
        """Queue a captured event (on the application's thread: O(1), no I/O, no lock); True
        if it was queued, False if it was dropped (and counted).

        Past the high-water mark it wakes the writer, which drains (and past the spool
        threshold spools) at once instead of after its flush interval. Past the cap a step
        event goes to the spool on this thread (:mod:`.overflow`: a write and an fsync, no
        database I/O, no lock shared across I/O); only without a writable spool is it dropped
        and counted, and its run marked as having lost events (the writer stops heart-beating
        it, so that ``flowtel reap`` can close it). A run's start and end are always queued:
        without them the run would stay ``running`` forever. If the writer's thread has died,
        every event is dropped and counted, and the first such ``put`` logs it at ERROR.
        """
        queue = self.queue
        size = len(queue)
        if size < self._high_water and self._died is None:
            queue.append(event)
            return True
        queued = True
        if self._died is not None:
            queued = False
            self._refuse_dead()
        elif size < self._max_queue_size or is_run_event(event):
            queue.append(event)
        else:
            overflow = self.overflow
            queued = overflow is not None and overflow.append(event)
        if not queued:
            self.events_dropped += 1
            run_id = run_id_of(event)
            if run_id not in self.lost_runs:
                self.lost_runs.add(run_id)
                self.runs_with_lost_events += 1
        wake = self._wake
        if not wake.is_set():
            wake.set()
        return queued

    def _refuse_dead(self) -> None:
        if not self._dead_logged:
            self._dead_logged = True
            logger.error(
                "flowtel's history writer thread has died (%r): events are dropped and counted "
                "in events_dropped; restart the process to record history again",
                self._died,
            )

    def start(self) -> None:
        """Start the writer's thread."""
        thread = threading.Thread(target=self._run, name="flowtel-history-writer", daemon=True)
        self._thread = thread
        thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer's thread runs and takes events (False once it stopped or died)."""
        thread = self._thread
        return (
            thread is not None and thread.is_alive() and self._died is None and not self._finished
        )

    def flush(self, timeout: float) -> bool:
        """Write everything queued so far; False if not all of it committed within *timeout*
        seconds, or if events were dropped since the last flush (past half of the timeout,
        what is left is spooled; while the database is down the flush waits, up to its
        timeout, for the spool's replay to commit it)."""
        if not self.alive:
            return self.state is not WriterState.DEAD and not self.queue and not self.has_pending
        return self._wait(WaitMarker(timeout))

    def _wait(self, marker: WaitMarker) -> bool:
        self.waits.add(marker)
        self.queue.append(marker)
        self._wake.set()
        marker.done.wait(max(0.0, marker.deadline - time.monotonic()))
        return marker.done.is_set() and marker.ok

    def shutdown(self, timeout: float, *, flushed: Callable[[], object] | None = None) -> bool:
        """Flush (within *timeout* seconds), then stop the thread; True if all was committed.

        Args:
            timeout: seconds for the whole shutdown.
            flushed: called once the flush returned, before the loop is told to stop (the
                processor stops queueing there: the loop then drains what came meanwhile).
        """
        deadline = time.monotonic() + timeout
        # the flush takes 60 %, the loop's last commits and spooling up to 90 %, the join the rest
        self._deadline = deadline - timeout / 10
        ok = self.flush(timeout * 0.6)
        if flushed is not None:
            flushed()
        self._stopped = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return ok and self._finished

    def wait_durable(self, timeout: float) -> bool:
        """Wait (at most *timeout* seconds) until every event queued so far is committed or
        fsync'd to the spool; False if not in time (counted in ``durable_timeouts``)."""
        if self.alive and (self.spool is not None or self.health.healthy):
            if self._wait(WaitMarker(timeout, durable=True)):
                return True
            self.waits.gave_up = True  # the next waits do not wait again for the same call
        self.stats.durable_timeouts += 1  # nothing can make it durable now: answered at once
        return False

    @property
    def state(self) -> WriterState:
        """The writer's current state: ``STOPPED`` only once its thread has ended after a
        shutdown, ``DEAD`` if it ended any other way."""
        if self._died is not None or (
            self._thread is not None and not self._thread.is_alive() and not self._finished
        ):
            return WriterState.DEAD
        return WriterState.STOPPED if self._finished else self.health.state

    def snapshot(self) -> dict[str, int | str | None]:
        """Counters (ints that only grow, but ``queue_depth``/``active_runs``) and state."""
        stats: dict[str, int | str | None] = {
            "queue_depth": len(self.queue),
            "events_dropped": self.events_dropped,
            "runs_with_lost_events": self.runs_with_lost_events,
            "active_runs": self.active_runs,
        }
        self.stats.values_rejected = self.pending.values_rejected
        self.stats.events_rejected = self.pending.events_rejected
        stats.update(dataclasses.asdict(self.stats))
        overflowed = self.overflow.rows if self.overflow is not None else 0
        stats["events_overflowed"] = overflowed
        stats["rows_spooled"] = self.stats.rows_spooled + overflowed
        stats["writer_state"] = self.state.value
        return stats

    @property
    def has_pending(self) -> bool:
        """Whether rows wait to be written (not yet flushed, or after a failure)."""
        return bool(self.pending)

    @property
    def settled(self) -> bool:
        """A waiting flush can be answered: nothing pending or in flight unspooled, and the
        schema is not being prepared (unless that call hangs: spooled rows wait for no schema)."""
        return self.pending.settled and (self.db.running != "prepare" or self._hung)

    @property
    def active_runs(self) -> int:
        """Runs started and not yet ended, as far as this writer has seen."""
        return len(self.pending.runs)

    # -- the writer's thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.prepare()
            while not self._turn_safely():
                pass
            self._finished = True
        except BaseException as exc:  # pragma: no cover - last resort: never die silently
            self._died = exc
            logger.exception(
                "flowtel's history writer thread died: nothing more is recorded in this process "
                "(writer_state 'dead'; restart it)"
            )
            self.waits.fail_all()

    def _turn_safely(self) -> bool:
        """One turn of the loop; an exception costs the turn (counted, logged), never the
        thread. True once the loop has finished after a shutdown."""
        try:
            return self._turn()
        except Exception:
            self.stats.loop_errors += 1
            now = time.monotonic()
            if self.stats.loop_errors == 1 or now - self._loop_errors_logged_at >= 60:
                self._loop_errors_logged_at = now
                logger.exception(
                    "flowtel's history writer hit an unexpected error (%d so far, counted in "
                    "loop_errors); it goes on",
                    self.stats.loop_errors,
                )
            self._wake.wait(self._flush_interval)  # never spin on a repeating error
            self._wake.clear()
            return False

    def _turn(self) -> bool:
        queue, batch = self.queue, self._max_batch_size
        self.collect()
        if self.events_dropped != self._drops_logged:
            self._report_drops()
        now = time.monotonic()
        self._check_hung(now)
        # Spill to the spool near the cap (without a spool, commit: nothing else to do)
        overloaded = len(queue) >= self._spool_threshold and self.spool is not None
        hurry = self.waits.hurry(now)
        outage = self.health.spooling or self._hung
        if overloaded or hurry or outage or self.db.idle or self._stop.is_set():
            # markers do not stop the drain: each is answered once its events are handled
            limit = len(queue) if overloaded or outage or self._stop.is_set() else batch
            self.waits.drained += self._drain(max(limit, 1))
        overflow = self.overflow
        if overflow is not None and overflow.unsealed:  # callers spooled past the cap
            overflow.seal()
            self.unreplayed = self._replay_due = True
        self.step(spool_only=overloaded, hurry=hurry)
        self._answer(time.monotonic())
        waits = self.waits
        self.maintain(idle=len(queue) < batch and (not waits.drained or self.settled))
        if self._stop.is_set() and not queue:
            self.finish(self._deadline)
            waits.fail_all()
            return True
        if waits.drained or not queue or not (self.db.idle or overloaded or hurry or outage):
            self._wake.wait(waits.pause(now, self._flush_interval))
            self._wake.clear()
        return False

    def _check_hung(self, now: float) -> None:
        """While a durable wait is pending, a call in flight for ``spool_after`` seconds (and
        any call a durable wait gave up on) counts as failed: its batch and what follows go to
        the spool while it hangs, until the database answers. With no one waiting, a slow call
        is only slow: its rows stay in memory (a flush spools them at half its timeout,
        shutdown at its deadline, a full queue at once)."""
        db = self.db
        if db.idle or self._hung or db.running == "stop":
            return
        if not self.waits.gave_up:
            if now - db.started_at < self._spool_after:
                return
            if not self.waits.durable_pending():
                return
        self._hung = True
        self.health.hung(db.running or "database", db.started_at)

    def _answer(self, now: float) -> None:
        """Answer each drained wait whose events are handled, or whose deadline passed: a
        durable wait needs its rows committed or fsync'd to the spool; a flush needs them
        committed (those spooled are replayed first while the database answers), and answers
        False when, since the last flush, events were dropped or rows lost or refused."""
        if not self.waits.drained:
            return
        settled = self.settled
        stats = self.stats  # what a flush cannot vouch for: dropped, lost, refused by the database
        self.waits.answer(
            now,
            settled=settled,
            committed=settled and self.health.healthy and not self.unreplayed,
            lost=self.events_dropped + stats.steps_dropped + stats.rows_lost + stats.rows_rejected,
            durable_impossible=self.spool is None and not self.health.healthy,
        )

    def _drain(self, limit: int) -> list[WaitMarker]:
        queue = self.queue
        batch: list[Any] = []
        markers: list[WaitMarker] = []
        popleft = queue.popleft
        while queue and len(batch) < limit:
            item = popleft()
            if isinstance(item, WaitMarker):
                markers.append(item)
                continue
            batch.append(item)
        if batch:
            lost = self.lost_runs
            if lost:  # a run's end closes the run: no heartbeat to stop any more
                for item in batch:
                    try:
                        if ends_run(item):
                            lost.discard(run_id_of(item))
                    except Exception:  # a malformed event: fold() rejects and counts it
                        pass
            self.fold(batch)
        return markers

    def _report_drops(self, *, final: bool = False) -> None:
        """Log dropped events at ERROR: the first, then at most once a minute (and at the end)."""
        now = time.monotonic()
        if not final and self._drops_logged and now - self._drops_logged_at < 60:
            return
        logger.error(
            "flowtel's history queue was full (%d events): %d events dropped so far, from %d "
            "runs; their rows miss those events, and runs left open are no longer heart-beaten "
            "so that `flowtel reap` can mark them abandoned (a run's end is never dropped)",
            self._max_queue_size,
            self.events_dropped,
            self.runs_with_lost_events,
        )
        self._drops_logged, self._drops_logged_at = self.events_dropped, now

    def fold(self, events: Iterable[Any]) -> None:
        """Fold *events* (in queue order) into run states and pending step rows."""
        conflicts = self.pending.step_conflicts
        self.pending.fold(events)
        self.stats.step_conflicts += self.pending.step_conflicts - conflicts
        self._cap_steps()

    def _cap_steps(self) -> None:
        """Keep at most ``max_pending_steps`` step rows in memory when the spool cannot take
        them: a spool that failed before is tried again first (space may have come back)."""
        if len(self.pending.steps) <= self._max_pending_steps:
            return
        if self.spool is not None and self._spool_broken and not self.health.healthy:
            self._spool("rows past the memory cap", outage=False)
        if self.spool is None or self._spool_broken:
            dropped = self.pending.drop_oldest_steps(self._max_pending_steps)
            if dropped:
                self.stats.steps_dropped += dropped
                if not self._steps_drop_logged:
                    logger.error(
                        "flowtel dropped %d step rows: the database cannot take them and %s, "
                        "and at most %d are kept in memory (counted in steps_dropped)",
                        dropped,
                        "there is no spool" if self.spool is None else "the spool is unwritable",
                        self._max_pending_steps,
                    )
                    self._steps_drop_logged = True

    def prepare(self) -> None:
        """Run the startup call and prepare the schema in the background (``prepare_schema``:
        create the tables on an empty database, or raise ``SchemaMismatchError``, logged once
        and retried)."""
        if (self._create_tables or self._startup is not None) and self.db.idle:
            self.db.submit("prepare", self._ensure_schema)

    def _ensure_schema(self) -> None:
        if self._startup is not None:  # on the database thread, like every call
            self._startup()
            self._startup = None
        if self._create_tables:
            prepare_schema(self.engine)
            self._create_tables = False

    def collect(self) -> None:
        """Take in the outcome of the database call that finished, if any."""
        outcome = self.db.collect()
        if outcome is None:
            return
        kind, value, error = outcome
        self._hung = self.waits.gave_up = False  # the database answered this call
        if kind == "commit":
            self.pending.landed(error is None)  # on failure its rows are pending again
            if error is not None:
                self._cap_steps()
            if error is not None and refused(error):  # not an outage: the replay isolates it
                self._spool("the database refused a row", outage=False)
        if error is not None:
            self.health.failed(error)
            return
        stats = self.stats
        if kind == "commit":
            self._count(value)
        elif kind == "replay":
            stats.rows_replayed = sum(r.rows_replayed for r in self.replayers)
            stats.rows_rejected = sum(r.rows_rejected for r in self.replayers)
            stats.spool_records_skipped = sum(r.damage.records for r in self.replayers)
            stats.spool_bytes_skipped = sum(r.damage.bytes for r in self.replayers)
            self._replay_due = self.unreplayed = value > 0
        elif kind == "beat":
            stats.heartbeats += 1
        if self.health.recovered():
            self._replay_due = bool(self.replayers)

    def step(self, *, spool_only: bool = False, hurry: bool = False) -> None:
        """Commit the pending rows, or spool them, or keep them for a retry.

        Args:
            spool_only: the queue is over its threshold: spool instead of committing.
            hurry: a deadline is near: spool everything, the batch in flight too.
        """
        pending, health, now = self.pending, self.health, time.monotonic()
        if self._hung and not pending.settled:
            self._spool(None, outage=True, with_flight=True)
        elif hurry and not pending.settled:
            self._spool("a flush deadline is near", outage=False, with_flight=True)
        elif not pending:
            return
        elif spool_only:
            self._spool("the queue is over its threshold", outage=False)
        elif self.db.idle and now >= health.retry_at:
            run_rows, step_rows = pending.take()
            # every durable wait drained so far has its rows in this batch (or committed or
            # spooled before): the database thread answers them as soon as it commits
            covered = self.waits.covered()
            self.db.submit("commit", lambda: self._commit(run_rows, step_rows, covered))
        elif health.spooling or health.failing_for(now) >= self._spool_after:
            self._spool(None, outage=True)

    def write(self) -> bool:
        """Commit every pending row now, on the calling thread (for tools and benchmarks)."""
        if not self.pending:
            return True
        run_rows, step_rows = self.pending.take()
        try:
            counts = self._commit(run_rows, step_rows)
        except Exception as exc:
            self.pending.landed(False)
            self.health.failed(exc)
            return False
        self.pending.landed(True)
        self._count(counts)
        self.health.recovered()
        return True

    def _commit(
        self, run_rows: list[Any], step_rows: list[Any], covered: Iterable[WaitMarker] = ()
    ) -> tuple[int, int, int]:
        """One transaction on the connection the writer keeps between batches (no pool
        check-out, ping or reset per batch: a durable point's wait is mostly round trips); on
        PostgreSQL the batch is one statement on a connection in autocommit mode, one round
        trip (:func:`~exporters.db.bulk.one_statement_batches`).
        A kept connection that the server dropped meanwhile is replaced and the batch tried
        once more at once (the upserts are idempotent); any other error discards it. Once
        committed, the durable waits *covered* (drained before the batch was taken) are
        answered here, on the database thread."""
        self._ensure_schema()
        for attempt in (1, 2):
            connection, fresh = self._connection, False
            if connection is None:
                connection, fresh = self.engine.connect(), True
                if one_statement_batches(connection.dialect):  # no BEGIN/COMMIT round trips
                    connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                self._connection = connection
            try:
                with connection.begin():
                    result = bulk_upsert_rows(connection, run_rows, step_rows)
            except BaseException as exc:
                self._connection = None
                _discard(connection)
                stale = isinstance(exc, DBAPIError) and exc.connection_invalidated
                if fresh or not stale or attempt == 2:
                    raise
                continue
            for marker in covered:  # their rows are committed: no hop through the writer
                if not marker.done.is_set():
                    marker.answer(True)
            return len(run_rows), len(step_rows), result.step_conflicts
        raise AssertionError("unreachable")  # pragma: no cover

    def _release_connection(self) -> None:
        """Close the kept connection (once no call can be using it)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            _discard(connection)

    def _count(self, counts: tuple[int, int, int]) -> None:
        self.stats.batches_written += 1
        self.stats.runs_written += counts[0]
        self.stats.steps_written += counts[1]
        self.stats.step_conflicts += counts[2]

    def _spool(self, why: str | None, *, outage: bool, with_flight: bool = False) -> None:
        """Put the pending rows (with the batch in flight) on disk: the spool, else its
        fallback; a batch the disk has no room for is split, and what fits is written."""
        spool = self.spool
        if spool is None:
            return
        spools = [spool] if self.fallback is None else [spool, self.fallback]
        used: list[Spool] = []
        failures: list[str] = []

        def append(run_rows: list[Any], step_rows: list[Any]) -> bool:
            for target in spools:
                try:
                    records = target.append(run_rows, step_rows)
                except OSError as exc:
                    self.stats.spool_errors += 1
                    failures.append(f"{target.directory}: {exc}")
                    continue
                self.stats.rows_spooled += records
                self.stats.spool_batches += 1
                if target is not spool and not self._on_fallback:
                    logger.error(
                        "flowtel cannot spool to its spool directory (%s); spooling to %s "
                        "instead (replayed from there by flowtel's writer)",
                        failures[0] if failures else "unwritable",
                        target.directory,
                    )
                self._on_fallback = target is not spool
                used.append(target)
                return True
            return False

        def put(rows: Rows) -> tuple[int, int]:
            took = [0, 0]
            for side, chunk_rows in enumerate(rows):
                size = len(chunk_rows)
                while took[side] < len(chunk_rows) and size >= 1:
                    chunk = chunk_rows[took[side] : took[side] + size]
                    pair = (chunk, []) if side == 0 else ([], chunk)
                    if append(*pair):
                        took[side] += len(chunk)
                    else:
                        size //= 2  # split what the disk has no room for
                if took[side] < len(chunk_rows):
                    break  # not even one row fits: the steps wait behind their runs
            return took[0], took[1]

        complete = self.pending.spool(put, with_flight=with_flight)
        if used:
            self.health.spooled(used[0].directory, why, outage=outage)
            self.unreplayed = True
        if complete:
            self._spool_broken = self._steps_drop_logged = False
            return
        if not self._spool_broken:
            logger.error(
                "flowtel cannot spool workflow history (%s); rows the database cannot "
                "take are kept in memory (at most %d step rows, then the oldest are dropped "
                "and counted) and counted as lost if still unwritten at shutdown; the spool is "
                "tried again with each batch",
                "; ".join(dict.fromkeys(failures)) or "no room",
                self._max_pending_steps,
            )
        self._spool_broken = True

    def maintain(self, *, idle: bool) -> None:
        """Probe, heartbeat or replay a spool chunk, if one is due and no call is in flight.

        Args:
            idle: the queue is short, so a spool chunk may be replayed now.
        """
        now = time.monotonic()
        if not self.db.idle:
            return
        if not self.health.healthy:
            if not self.pending and now >= self.health.retry_at:
                self.db.submit("probe", self._probe)
            return
        if now >= self._next_beat:
            self._next_beat = now + self._heartbeat_interval
            self._replay_due = bool(self.replayers)  # also picks up others' leftovers
            lost = self.lost_runs
            run_ids = [r for r in self.pending.active_run_ids() if r not in lost]
            if run_ids:
                self.db.submit("beat", lambda: self._beat(run_ids))
                return
        if idle and self._replay_due and self.replayers:
            self._seal()  # our own files become replayable
            self.db.submit("replay", self._replay_chunk)

    def _probe(self) -> None:
        self._ensure_schema()
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def _beat(self, run_ids: list[str]) -> None:
        with self.engine.begin() as connection:
            heartbeat(connection, run_ids)

    def _replay_chunk(self) -> int:
        self._ensure_schema()
        for replayer in self.replayers:
            if replayer.directory in self._refused:
                continue
            try:
                count = replayer.replay_chunk(self.engine)
            except SpoolDirectoryError as exc:
                self._refused.add(replayer.directory)
                logger.error("%s", exc)
                continue
            if count:
                return count
        return 0

    def _seal(self) -> None:
        for spool in (self.spool, self.fallback):
            if spool is not None:
                spool.seal()
        if self.overflow is not None:
            self.overflow.seal()

    def finish(self, deadline: float) -> None:
        """Commit what is left, and replay what this writer spooled, if the database takes it
        before *deadline*; spool the rest (replayed at the next start)."""
        while time.monotonic() < deadline:
            self.collect()
            self._check_hung(time.monotonic())
            if self._hung:
                break  # a call that does not answer: what is left goes to the spool
            if not self.db.idle:
                self.db.wait(min(0.05, deadline - time.monotonic()))
            elif not self.health.healthy:
                break
            elif self.pending:
                self.step()
            elif self.unreplayed and self.replayers:
                self._seal()
                self.db.submit("replay", self._replay_chunk)
            else:
                break
        if not self.pending.settled:
            self._spool("shutting down", outage=False, with_flight=True)
        if not self.pending.settled:
            self._count_lost()
        if self.events_dropped or self.stats.steps_dropped or self.stats.rows_lost:
            if self.events_dropped != self._drops_logged:
                self._report_drops(final=True)
            logger.error(
                "flowtel's workflow history is incomplete: in this process %d events were "
                "dropped (queue full), %d step rows dropped (no working spool, memory cap) and "
                "%d rows neither committed nor spooled at shutdown",
                self.events_dropped,
                self.stats.steps_dropped,
                self.stats.rows_lost,
            )
        self.close()

    def _count_lost(self) -> None:
        """Count (and log) the rows neither committed nor spooled: they are lost."""
        pending = self.pending
        runs, steps = set(pending.dirty), set(pending.steps)
        if pending.flight is not None and not pending.flight_spooled:
            runs.update(pending.flight[0])  # in flight: not known to be committed
            steps.update(pending.flight[1])
        self.stats.rows_lost += len(runs) + len(steps)
        logger.error(
            "flowtel lost %d run rows and %d step rows at shutdown: the database did not take "
            "them (%s) and %s",
            len(runs),
            len(steps),
            self.stats.last_error or "no time left",
            "there is no spool" if self.spool is None else "the spool could not be written",
        )

    def close(self) -> None:
        """Seal the spool file, release the file being replayed, end the database thread."""
        self._seal()
        if self.db.running != "replay":
            for replayer in self.replayers:
                replayer.release()
        # The kept connection is closed once no call can be using it: now, or by the database
        # thread after the call in flight (checking only "idle" left it open after a call
        # that had finished but was not collected).
        self.db.stop(cleanup=self._release_connection)

    def forget_files(self) -> None:
        """In a forked child: drop the inherited spool files without unlocking them, and keep
        the inherited database connection unclosed (closing it would end the parent's)."""
        if self._connection is not None:
            _INHERITED_CONNECTIONS.append(self._connection)
            self._connection = None
        for spool in (self.spool, self.fallback):
            if spool is not None:
                spool.forget()
        if self.overflow is not None:
            self.overflow.forget()
        for replayer in self.replayers:
            replayer.release()  # closing our copy keeps the parent's lock


def _discard(connection: Connection) -> None:
    """Close *connection*'s driver connection outright, not back into the engine's pool: a
    call that outlived the writer's shutdown (a hung database) returns after the pool was
    disposed, and a connection checked into that old pool stayed open until garbage
    collected; one that failed a batch is not worth keeping either."""
    with contextlib.suppress(Exception):
        connection.invalidate()
    with contextlib.suppress(Exception):
        connection.close()
