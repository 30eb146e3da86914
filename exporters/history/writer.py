"""The history writer: folds queued events per run into rows, commits them or spools them.

Owned by the processor's writer thread, never the application's; its database calls run on a
:class:`~.dbthread.DatabaseThread`, so it never waits on the database. Each batch is
one transaction with one multi-row upsert for runs and one for steps. A failed batch goes back
to the pending rows and is retried with exponential backoff (see :mod:`.health`) while
new events keep being folded in. Pending rows go to the local spool once the database has
failed for ``spool_after`` seconds, at once when it refuses the rows themselves (the replay
then isolates the refused ones), when the queue is over its threshold, and when a flush
deadline is near (then the batch in flight too). While the database is down every batch follows
them, and each attempt (with the next batch, or ``SELECT 1`` when idle) probes for its return;
then the spool is replayed a chunk at a time between batches. An outage of any length thus
costs the active runs' state plus a batch or two; without a working spool, at most
``max_pending_steps`` step rows are kept (the oldest are dropped, and counted). While healthy,
the writer refreshes the heartbeat of its active runs every ``heartbeat_interval`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from exporters.db.bulk import bulk_upsert_rows
from exporters.db.check import prepare_schema
from exporters.db.driver_errors import refused
from exporters.db.heartbeat import heartbeat
from exporters.history.dbthread import DatabaseThread
from exporters.history.health import WriterHealth, WriterStats
from exporters.history.pending import PendingRows, Rows
from exporters.spool.files import Spool, spool_key
from exporters.spool.replay import Replayer

__all__ = ["HistoryWriter", "WriterStats"]

logger = logging.getLogger("flowtel.writer")


class HistoryWriter:
    """Turns events into rows and commits them, or spools them; owned by one thread.

    Args:
        engine: the history database.
        spool_directory: where rows go while the database cannot take them, and are
            replayed from (``None``: keep them in memory, dropping the oldest step rows past
            *max_pending_steps*).
        spool_after: seconds of failed writes before rows go to the spool.
        heartbeat_interval: seconds between refreshes of the active runs' ``updated_at``.
        max_pending_steps: step rows kept in memory without a spool, or a working one.
        notify: wakes the writer thread when a database call has finished.
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
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.stats = WriterStats()
        self.health = WriterHealth(engine.url, self.stats, max_backoff)
        self.db = DatabaseThread(notify or (lambda: None))
        self.pending = PendingRows(service_name, trace_url_template, context_keys)
        key = spool_key(engine.url)
        self.spool = Spool(spool_directory, key) if spool_directory else None
        self.replayer = Replayer(spool_directory, key) if spool_directory else None
        self.unreplayed = False  # rows this writer spooled that were not replayed yet
        self._create_tables = create_tables
        self._spool_after = spool_after
        self._heartbeat_interval = heartbeat_interval
        self._max_pending_steps = max_pending_steps
        self._spool_broken = False
        self._replay_due = self.replayer is not None
        self._next_beat = time.monotonic() + heartbeat_interval

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

    def fold(self, events: Iterable[Any]) -> None:
        """Fold *events* (in queue order) into run states and pending step rows."""
        self.pending.fold(events)
        if self.spool is None or self._spool_broken:
            self.stats.steps_dropped += self.pending.drop_oldest_steps(self._max_pending_steps)

    def prepare(self) -> None:
        """Prepare the schema in the background (``prepare_schema``: create the tables on an
        empty database, or raise ``SchemaMismatchError``, logged once and retried)."""
        if self._create_tables and self.db.idle:
            self.db.submit("prepare", self._ensure_schema)

    def _ensure_schema(self) -> None:
        if self._create_tables:  # on the database thread, like every call
            prepare_schema(self.engine)
            self._create_tables = False

    # -- one turn of the writer's loop ------------------------------------------------------
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
        elif kind == "replay" and self.replayer is not None:
            stats.rows_replayed = self.replayer.rows_replayed
            stats.rows_rejected = self.replayer.rows_rejected
            self._replay_due = self.unreplayed = value > 0
        elif kind == "beat":
            stats.heartbeats += 1
        if self.health.recovered():
            self._replay_due = self.replayer is not None

    def step(self, *, urgent: bool = False, spool_only: bool = False, hurry: bool = False) -> None:
        """Commit the pending rows, or spool them, or keep them for a retry.

        Args:
            urgent: a flush waits (it is answered once the rows are committed or spooled).
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

    def _commit(self, run_rows: list[Any], step_rows: list[Any]) -> tuple[int, int]:
        self._ensure_schema()
        with self.engine.begin() as connection:
            bulk_upsert_rows(connection, run_rows, step_rows)
        return len(run_rows), len(step_rows)

    def _count(self, counts: tuple[int, int]) -> None:
        self.stats.batches_written += 1
        self.stats.runs_written += counts[0]
        self.stats.steps_written += counts[1]

    def _spool(self, why: str | None, *, outage: bool, with_flight: bool = False) -> None:
        spool = self.spool
        if spool is None:
            return

        def put(rows: Rows) -> bool:
            try:
                records = spool.append(*rows)
            except OSError as exc:
                self.stats.spool_errors += 1
                if not self._spool_broken:
                    logger.error(
                        "flowtel cannot spool to %s (%s); keeping at most %d step rows in memory",
                        spool.directory,
                        exc,
                        self._max_pending_steps,
                    )
                self._spool_broken = True
                return False
            self.stats.rows_spooled += records
            self.stats.spool_batches += 1
            return True

        if self.pending.spool(put, with_flight=with_flight):
            self.health.spooled(spool.directory, why, outage=outage)
            self._spool_broken = False
            self.unreplayed = True

    # -- between batches -------------------------------------------------------------------
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
            self._replay_due = self.replayer is not None  # also picks up others' leftovers
            run_ids = self.pending.active_run_ids()
            if run_ids:
                self.db.submit("beat", lambda: self._beat(run_ids))
                return
        if idle and self._replay_due and self.replayer is not None:
            if self.spool is not None:
                self.spool.seal()  # our own file becomes replayable
            self.db.submit("replay", self._replay_chunk)

    def _probe(self) -> None:
        self._ensure_schema()
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def _beat(self, run_ids: list[str]) -> None:
        with self.engine.begin() as connection:
            heartbeat(connection, run_ids)

    def _replay_chunk(self) -> int:
        assert self.replayer is not None
        self._ensure_schema()
        return self.replayer.replay_chunk(self.engine)

    # -- the end ---------------------------------------------------------------------------
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
                self.step(urgent=True)
            elif self.unreplayed and self.replayer is not None and self.spool is not None:
                self.spool.seal()
                self.db.submit("replay", self._replay_chunk)
            else:
                break
        if not self.pending.settled:
            self._spool("shutting down", outage=False, with_flight=True)
        self.close()

    def close(self) -> None:
        """Seal the spool file, release the file being replayed, end the database thread."""
        if self.spool is not None:
            self.spool.seal()
        if self.replayer is not None and self.db.running != "replay":
            self.replayer.release()
        self.db.stop()

    def forget_files(self) -> None:
        """In a forked child: drop the inherited spool files without unlocking them."""
        if self.spool is not None:
            self.spool.forget()
        if self.replayer is not None:
            self.replayer.release()  # closing our copy keeps the parent's lock
