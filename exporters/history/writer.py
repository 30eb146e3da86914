"""The history writer: the one owner of everything after the queue, in one loop.

The processor only captures events and hands them to :meth:`HistoryWriter.put`. The writer
holds the queue and runs the loop on its own thread; each turn it collects the outcome of the
last database call, drains a batch, folds it into run state (:mod:`.pending`, :mod:`.rows`),
then commits it, spools it or keeps it for a retry, answers waiting flushes, and between
batches probes, heart-beats or replays a spool chunk. Its states are the
:class:`~.health.WriterState` enum; :mod:`.health` tracks the database's side of them (backoff,
logging each change once) and :mod:`.dbthread` runs each database call on a thread of its own,
so the writer never waits on the database.

Each batch is one transaction with one multi-row upsert for runs and one for steps. A failed
batch goes back to the pending rows and is retried with exponential backoff while new events
keep being folded in. Pending rows go to the local spool once the database has failed for
``spool_after`` seconds, at once when it refuses the rows themselves (the replay then isolates
the refused ones), when the queue is over its threshold, and when a flush deadline is near
(then the batch in flight too). While the database is down every batch follows them, and each
attempt (with the next batch, or ``SELECT 1`` when idle) probes for its return; then the spool
is replayed a chunk at a time between batches. An outage of any length thus costs the active
runs' state plus a batch or two; without a working spool, at most ``max_pending_steps`` step
rows are kept (the oldest are dropped, and counted). While healthy, the writer refreshes the
heartbeat of its active runs every ``heartbeat_interval`` seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from exporters.db.bulk import bulk_upsert_rows
from exporters.db.check import prepare_schema
from exporters.db.driver_errors import refused
from exporters.db.heartbeat import heartbeat
from exporters.errors import SpoolDirectoryError
from exporters.history.capture import ends_run, run_id_of
from exporters.history.dbthread import DatabaseThread
from exporters.history.health import WriterHealth, WriterState, WriterStats
from exporters.history.pending import PendingRows, Rows
from exporters.spool.files import Spool, fallback_spool_directory, spool_key
from exporters.spool.replay import Replayer

__all__ = ["HistoryWriter", "WriterState", "WriterStats"]

logger = logging.getLogger("flowtel.writer")


class _FlushMarker:
    """Queued by :meth:`HistoryWriter.flush` (or :meth:`~HistoryWriter.wait_durable`); set
    once everything queued before it was handled."""

    __slots__ = ("done", "durable", "ok")

    def __init__(self, *, durable: bool = False) -> None:
        self.done = threading.Event()
        self.durable = durable  # answered once committed *or spooled*, without a deadline
        self.ok = False


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
        self._hurry_at: float | None = None
        self._deadline = float("inf")
        self._stop = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------------
    def put(self, event: Any) -> None:
        """Queue a captured event (on the application's thread: O(1), no I/O, no lock).

        Past the high-water mark it wakes the writer, which drains (and past the spool
        threshold spools) at once instead of after its flush interval. Past the cap an event is
        dropped and counted, and its run is marked as having lost events (the writer stops
        heart-beating it, so that ``flowtel reap`` can close it) — but a run's end is always
        queued: without it the run would stay ``running`` forever.
        """
        queue = self.queue
        size = len(queue)
        if size < self._high_water:
            queue.append(event)
            return
        if size < self._max_queue_size or ends_run(event):
            queue.append(event)
        else:
            self.events_dropped += 1
            run_id = run_id_of(event)
            if run_id not in self.lost_runs:
                self.lost_runs.add(run_id)
                self.runs_with_lost_events += 1
        wake = self._wake
        if not wake.is_set():
            wake.set()

    def start(self) -> None:
        """Start the writer's thread."""
        thread = threading.Thread(target=self._run, name="flowtel-history-writer", daemon=True)
        self._thread = thread
        thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def flush(self, timeout: float) -> bool:
        """Write everything queued so far; False if not all of it committed within *timeout*
        seconds (past half of it, what is left is spooled)."""
        if not self.alive:
            return not self.queue and not self.has_pending
        self._hurry_at = min(self._hurry_at or float("inf"), time.monotonic() + timeout / 2)
        marker = _FlushMarker()
        self.queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout) and marker.ok

    def shutdown(self, timeout: float, *, flushed: Callable[[], object] | None = None) -> bool:
        """Flush (within *timeout* seconds), then stop the thread; True if all was committed.

        Args:
            timeout: seconds for the whole shutdown.
            flushed: called once the flush returned, before the loop is told to stop (the
                processor stops queueing there: the loop then drains what came meanwhile).
        """
        deadline = time.monotonic() + timeout
        self._deadline = deadline - timeout / 10  # leave time to spool
        self._hurry_at = time.monotonic() + timeout / 2
        ok = self.flush(timeout)
        if flushed is not None:
            flushed()
        self._stopped = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        return ok

    def wait_durable(self, timeout: float) -> bool:
        """Wait (at most *timeout* seconds) until every event queued so far is committed or
        fsync'd to the spool; False if not in time (counted in ``durable_timeouts``)."""
        if not self.alive:
            return False
        marker = _FlushMarker(durable=True)
        self.queue.append(marker)
        self._wake.set()
        if marker.done.wait(timeout) and marker.ok:
            return True
        self.stats.durable_timeouts += 1
        return False

    @property
    def state(self) -> WriterState:
        """The writer's current state."""
        return WriterState.STOPPED if self._stopped else self.health.state

    def snapshot(self) -> dict[str, int | str | None]:
        """Counters (ints that only grow, but ``queue_depth``/``active_runs``) and state."""
        stats: dict[str, int | str | None] = {
            "queue_depth": len(self.queue),
            "events_dropped": self.events_dropped,
            "runs_with_lost_events": self.runs_with_lost_events,
            "active_runs": self.active_runs,
        }
        stats.update(dataclasses.asdict(self.stats))
        stats["writer_state"] = self.state.value
        return stats

    @property
    def has_pending(self) -> bool:
        """Whether rows wait to be written (not yet flushed, or after a failure)."""
        return bool(self.pending)

    @property
    def settled(self) -> bool:
        """A waiting flush can be answered: nothing pending or in flight unspooled, and the
        schema is not being prepared."""
        return self.pending.settled and self.db.running != "prepare"

    @property
    def active_runs(self) -> int:
        """Runs started and not yet ended, as far as this writer has seen."""
        return len(self.pending.runs)

    # -- the writer's thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.prepare()
            self._loop()
        except Exception:  # pragma: no cover - last resort: never die silently
            logger.exception("flowtel's history writer stopped unexpectedly")

    def _loop(self) -> None:
        queue, batch = self.queue, self._max_batch_size
        waiting: list[_FlushMarker] = []
        while True:
            self.collect()
            if self.events_dropped != self._drops_logged:
                self._report_drops()
            # Spill to the spool near the cap (without a working one, commit: nothing else to do)
            overloaded = len(queue) >= self._spool_threshold and self._can_spool
            hurry = self._hurry_at is not None and time.monotonic() >= self._hurry_at
            if not waiting and (overloaded or hurry or self.db.idle):  # one busy thread
                waiting = self._drain(batch * (4 if overloaded else 1))
            self.step(spool_only=overloaded, hurry=hurry)
            # A flush is answered once its rows are committed — those spooled because the
            # queue overflowed included: with the database healthy they are replayed first —
            # or, at the deadline, with whatever is left spooled.
            # A durable wait only needs its rows committed or spooled.
            replaying = self.unreplayed and self.health.healthy
            durable = all(marker.durable for marker in waiting)
            if waiting and ((self.settled and (durable or not replaying)) or hurry):
                ok = self.settled and self.health.healthy and not self.unreplayed
                for marker in waiting:
                    marker.ok = self.settled if marker.durable else ok
                    marker.done.set()
                waiting = []
                if not self._stop.is_set():
                    self._hurry_at = None
            self.maintain(idle=len(queue) < batch and (not waiting or self.settled))
            if self._stop.is_set() and not queue and not waiting:
                self.finish(self._deadline)
                return
            if waiting or not queue or not (self.db.idle or overloaded or hurry):
                self._wake.wait(self._flush_interval)
                self._wake.clear()

    def _drain(self, limit: int) -> list[_FlushMarker]:
        queue = self.queue
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
            lost = self.lost_runs
            if lost:  # a run's end closes the run: no heartbeat to stop any more
                for item in batch:
                    if ends_run(item):
                        lost.discard(run_id_of(item))
            self.fold(batch)
        return markers

    @property
    def _can_spool(self) -> bool:
        return self.spool is not None and not self._spool_broken

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
        if kind == "commit":
            self.pending.landed(error is None)  # on failure its rows are pending again
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
        if hurry and not pending.settled:
            self._spool("a flush deadline is near", outage=False, with_flight=True)
        elif not pending:
            return
        elif spool_only:
            self._spool("the queue is over its threshold", outage=False)
        elif self.db.idle and now >= health.retry_at:
            run_rows, step_rows = pending.take()
            self.db.submit("commit", lambda: self._commit(run_rows, step_rows))
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

    def _commit(self, run_rows: list[Any], step_rows: list[Any]) -> tuple[int, int, int]:
        self._ensure_schema()
        with self.engine.begin() as connection:
            result = bulk_upsert_rows(connection, run_rows, step_rows)
        return len(run_rows), len(step_rows), result.step_conflicts

    def _count(self, counts: tuple[int, int, int]) -> None:
        self.stats.batches_written += 1
        self.stats.runs_written += counts[0]
        self.stats.steps_written += counts[1]
        self.stats.step_conflicts += counts[2]

    def _spool(self, why: str | None, *, outage: bool, with_flight: bool = False) -> None:
        spool = self.spool
        if spool is None:
            return
        spools = [spool] if self.fallback is None else [spool, self.fallback]
        used: list[Spool] = []

        def put(rows: Rows) -> bool:
            failures = []
            for target in spools:
                try:
                    records = target.append(*rows)
                except OSError as exc:
                    self.stats.spool_errors += 1
                    failures.append(f"{target.directory}: {exc}")
                    continue
                self.stats.rows_spooled += records
                self.stats.spool_batches += 1
                used.append(target)
                if target is not spool and not self._on_fallback:
                    logger.error(
                        "flowtel cannot spool to its spool directory (%s); spooling to %s "
                        "instead (replayed from there by flowtel's writer)",
                        failures[0],
                        target.directory,
                    )
                self._on_fallback = target is not spool
                return True
            if not self._spool_broken:
                logger.error(
                    "flowtel cannot spool workflow history (%s); rows the database cannot "
                    "take are kept in memory (at most %d step rows, then the oldest are dropped "
                    "and counted) and counted as lost if still unwritten at shutdown",
                    "; ".join(failures),
                    self._max_pending_steps,
                )
            self._spool_broken = True
            return False

        if self.pending.spool(put, with_flight=with_flight):
            self.health.spooled(used[0].directory, why, outage=outage)
            self._spool_broken = self._steps_drop_logged = False
            self.unreplayed = True

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

    def finish(self, deadline: float) -> None:
        """Commit what is left, and replay what this writer spooled, if the database takes it
        before *deadline*; spool the rest (replayed at the next start)."""
        while time.monotonic() < deadline:
            self.collect()
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
        self.db.stop()

    def forget_files(self) -> None:
        """In a forked child: drop the inherited spool files without unlocking them."""
        for spool in (self.spool, self.fallback):
            if spool is not None:
                spool.forget()
        for replayer in self.replayers:
            replayer.release()  # closing our copy keeps the parent's lock
