"""The history writer's health: its counters, and whether it is healthy, retrying or spooling.

:class:`WriterStats` holds the counters the processor reports (batches and rows written, write
errors, retries, rows spooled and replayed, heartbeats ...). :class:`WriterHealth` tracks the
database's state as the writer sees it: ``healthy``; ``retrying`` after a failure, with an
exponential backoff (50 ms doubling up to ``max_backoff``) and the failed rows held in memory;
``spooling`` once rows went to the spool, until a write or probe succeeds. Each change is
logged once, never per attempt, and always with the database URL's password masked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum

from sqlalchemy.engine import URL

from exporters.db.driver_errors import describe
from exporters.db.engine import display_url

__all__ = ["WriterHealth", "WriterState", "WriterStats"]

logger = logging.getLogger("flowtel.writer")


class WriterState(Enum):
    """The writer's states, the one place they are named; its loop acts on the current one.

    Transitions (:class:`~exporters.history.writer.HistoryWriter` drives them, this module
    tracks them): ``HEALTHY`` → ``RETRYING`` when a database call fails; ``RETRYING`` →
    ``SPOOLING`` after ``spool_after`` seconds of failures (or at once when the database
    refuses the rows themselves); ``RETRYING``/``SPOOLING`` → ``HEALTHY`` when a write or
    probe succeeds (the spool is then replayed between batches); a call that has not answered
    within ``spool_after`` seconds counts as failed (``SPOOLING`` while it hangs); any state →
    ``STOPPED`` once the thread ended at shutdown, → ``DEAD`` if it ended any other way.
    """

    HEALTHY = "healthy"
    """Each batch is committed as it comes; heartbeats and spool replays run between them."""
    RETRYING = "retrying"
    """A call failed: the rows wait in memory and are retried with exponential backoff."""
    SPOOLING = "spooling"
    """The database stays down: each batch goes to the spool; attempts probe for its return."""
    STOPPED = "stopped"
    """The loop ended (shutdown): what was not committed is spooled; nothing more is taken."""
    DEAD = "dead"
    """The writer's thread ended without a shutdown: nothing is recorded any more; ``put``
    refuses (and counts) every event, and health endpoints answer 503."""


@dataclass
class WriterStats:
    """Counters describing the writer's health (read them from any thread)."""

    batches_written: int = 0
    runs_written: int = 0
    steps_written: int = 0
    step_conflicts: int = 0
    write_errors: int = 0
    retries: int = 0
    steps_dropped: int = 0
    rows_spooled: int = 0
    spool_batches: int = 0
    spool_errors: int = 0
    rows_replayed: int = 0
    rows_rejected: int = 0
    values_rejected: int = 0
    events_rejected: int = 0
    loop_errors: int = 0
    spool_records_skipped: int = 0
    spool_bytes_skipped: int = 0
    rows_lost: int = 0
    durable_timeouts: int = 0
    heartbeats: int = 0
    last_error: str | None = field(default=None)


class WriterHealth:
    """Whether the database takes writes, when to try again, and whether rows are spooled.

    Args:
        url: the database's URL (only ever displayed with its password masked).
        stats: the counters to update.
        max_backoff: the longest wait between two attempts, in seconds.
    """

    def __init__(self, url: URL, stats: WriterStats, max_backoff: float = 5.0) -> None:
        self.url = url
        self.stats = stats
        self.max_backoff = max_backoff
        self.failing_since: float | None = None
        self.retry_at = 0.0
        self.spooling = False
        self._backoff = 0.0
        self._reasons: set[str] = set()

    @property
    def state(self) -> WriterState:
        """``HEALTHY``, ``RETRYING`` (rows held in memory) or ``SPOOLING``."""
        if self.spooling:
            return WriterState.SPOOLING
        return WriterState.HEALTHY if self.failing_since is None else WriterState.RETRYING

    @property
    def healthy(self) -> bool:
        """Neither retrying nor spooling."""
        return self.failing_since is None and not self.spooling

    def failing_for(self, now: float) -> float:
        """Seconds since the first failure of the current outage (0 when healthy)."""
        return 0.0 if self.failing_since is None else now - self.failing_since

    def failed(self, exc: Exception) -> None:
        """Count a failed attempt, log the first of an outage, and back off."""
        stats = self.stats
        stats.write_errors += 1
        stats.last_error = describe(exc)
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            logger.error(
                "flowtel cannot write workflow history to %s (%s); "
                "retrying in the background, then spooling to local disk",
                display_url(self.url),
                stats.last_error,
            )
        else:
            stats.retries += 1
        self._backoff = min(self.max_backoff, max(0.05, self._backoff * 2))
        self.retry_at = time.monotonic() + self._backoff

    def hung(self, kind: str, since: float) -> None:
        """A database call (*kind*, submitted at *since*) has not answered: count it as an
        outage that began when it was submitted, so that rows are spooled at once."""
        if self.failing_since is not None and self.failing_since <= since:
            return
        self.stats.write_errors += 1
        self.stats.last_error = f"the database has not answered a {kind} call"
        if self.failing_since is None:
            logger.error(
                "flowtel's %s call to %s has not answered for %.1f s; spooling to local disk "
                "until it does",
                kind,
                display_url(self.url),
                time.monotonic() - since,
            )
        self.failing_since = since

    def spooled(self, directory: object, why: str | None, *, outage: bool) -> None:
        """Rows went to the spool: log the first time of an outage, or of each other reason.

        Args:
            directory: the spool directory (for the log line).
            why: the reason, if not an outage.
            outage: the database failed: later batches follow to the spool until it answers.
        """
        reason = why or "the database is unreachable"
        if (outage and not self.spooling) or (not outage and reason not in self._reasons):
            self._reasons.add(reason)
            logger.warning(
                "flowtel spools workflow history to %s (%s); it is replayed once %s answers",
                directory,
                reason,
                display_url(self.url),
            )
        self.spooling = self.spooling or outage

    def recovered(self) -> bool:
        """A write or probe succeeded; return whether the database had been failing."""
        was_down = not self.healthy
        if was_down:
            since = self.failing_since
            logger.warning(
                "flowtel writes workflow history to %s again%s%s",
                display_url(self.url),
                f" after {time.monotonic() - since:.1f} s" if since is not None else "",
                "; replaying the spool" if self.spooling else "",
            )
        self.failing_since = None
        self.spooling = False
        self._backoff = 0.0
        self.retry_at = 0.0
        return was_down
