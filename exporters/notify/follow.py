"""The loop of ``flowtel notify``: poll for newly finished runs and deliver each one, in order.

Each poll asks the history for runs with a matching final status whose ``completed_at`` is at
or after the state's look-back floor, oldest first, skips those already delivered and
delivers the rest one by one. A failed delivery is retried with exponential backoff (doubling
from ``retry_delay`` up to ``max_delay``, or the receiver's ``Retry-After``); after
``max_attempts`` (0: never) the run is given up on, counted, logged at ERROR and listed in
the state file, so one document a receiver always refuses cannot stop the others. Database
errors while polling are the caller's to report; the follower keeps its place.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from exporters.db.json import dumps_text
from exporters.notify.deliver import Delivery, DeliveryError
from exporters.notify.notice import Notice, notice_for
from exporters.notify.state import NotifyState
from exporters.query.store import HistoryStore, RunNotFoundError

__all__ = ["FollowStats", "Follower"]

logger = logging.getLogger("flowtel.notify")


@dataclasses.dataclass
class FollowStats:
    """What the follower did (counters only grow)."""

    polls: int = 0
    delivered: int = 0
    attempts: int = 0
    failures: int = 0
    given_up: int = 0
    vanished: int = 0
    """Runs deleted (pruned) between the poll that found them and the read of their row."""


class Follower:
    """Delivers a notice for each run that finishes, once, in ``completed_at`` order.

    Args:
        store: the history to follow.
        delivery: where notices go.
        state: where it stopped (see :class:`~exporters.notify.state.NotifyState`).
        statuses: the final statuses to notify about.
        workflow: only runs of this workflow name.
        base_url: ``flowtel serve``'s address, for each notice's ``url``.
        max_attempts: attempts per notice before giving up on it (0: retry for ever).
        retry_delay: the first backoff, in seconds; it doubles after each failure.
        max_delay: the longest backoff.
        on_delivered: called with each notice delivered and its attempt count.
        on_failure: called with each failed attempt's notice, error and next delay.
        sleep: waits between attempts (tests pass a recorder).
    """

    def __init__(
        self,
        store: HistoryStore,
        delivery: Delivery,
        state: NotifyState,
        *,
        statuses: Sequence[str],
        workflow: str | None = None,
        base_url: str | None = None,
        max_attempts: int = 10,
        retry_delay: float = 1.0,
        max_delay: float = 300.0,
        on_delivered: Callable[[Notice, int], None] | None = None,
        on_failure: Callable[[Notice, DeliveryError, float | None], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.delivery = delivery
        self.state = state
        self.statuses = tuple(statuses)
        self.workflow = workflow
        self.base_url = base_url
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self.on_delivered = on_delivered
        self.on_failure = on_failure
        self.sleep = sleep
        self.stats = FollowStats()

    def poll(self) -> int:
        """Deliver every matching run finished since the last poll; return how many."""
        self.stats.polls += 1
        finished = self.store.finished_runs(
            since=self.state.since, statuses=self.statuses, workflow=self.workflow
        )
        done = 0
        for run in finished:
            if self.state.delivered(run.run_id) or run.completed_at is None:
                continue
            try:
                detail = self.store.get_run(run.run_id)
            except RunNotFoundError:  # pruned between the two reads: nothing left to send
                self.stats.vanished += 1
                self.state.record(run.run_id, run.completed_at)
                continue
            notice = notice_for(detail, base_url=self.base_url)
            taken = self._deliver(notice)
            self.state.record(run.run_id, run.completed_at, given_up=not taken)
            done += taken
        return done

    def follow(self, interval: float) -> None:
        """Poll every *interval* seconds until interrupted (Ctrl-C ends it)."""
        while True:
            self.poll()
            self.sleep(interval)

    def _deliver(self, notice: Notice) -> bool:
        document = dumps_text(notice.to_json()).encode("utf-8")
        attempt = 0
        while True:
            attempt += 1
            self.stats.attempts += 1
            try:
                self.delivery.send(document, run_id=notice.run_id)
            except DeliveryError as exc:
                self.stats.failures += 1
                if self.max_attempts and attempt >= self.max_attempts:
                    self.stats.given_up += 1
                    logger.error(
                        "flowtel notify gave up on run %s after %d attempts: %s "
                        "(listed under 'undelivered' in the state file)",
                        notice.run_id,
                        attempt,
                        exc,
                    )
                    if self.on_failure is not None:
                        self.on_failure(notice, exc, None)
                    return False
                delay = min(self.retry_delay * 2 ** (attempt - 1), self.max_delay)
                if exc.retry_after is not None:
                    delay = min(max(exc.retry_after, self.retry_delay), self.max_delay)
                if self.on_failure is not None:
                    self.on_failure(notice, exc, delay)
                self.sleep(delay)
                continue
            self.stats.delivered += 1
            if self.on_delivered is not None:
                self.on_delivered(notice, attempt)
            return True

