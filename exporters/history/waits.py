"""Flushes and durable waits: each a marker in the writer's queue, with a deadline of its own.

A caller of ``flush`` or ``wait_durable`` queues a :class:`WaitMarker` behind the events it must
see handled and blocks on it. :class:`Waits` is the writer's book of them: the *live* markers
(added from any thread, looked at for their deadlines) and the *drained* ones (their events are
folded, they wait for their rows). At ``hurry_at`` (half its timeout) a marker makes the writer
spool what is not committed, the batch in flight too; at its deadline it is answered ``False``
whatever happened; otherwise a flush is answered once its rows are committed (``True`` only if
nothing was lost since the last answered flush) and a durable wait once they are committed or
fsync'd to the spool. Once a durable wait has given up on a database call that does not answer
(``gave_up``), the writer counts that call as failed at once, so the next waits spool instead of
waiting on it again. Nothing here touches the database or the queue.
"""

from __future__ import annotations

import threading
import time

__all__ = ["WaitMarker", "Waits"]


class WaitMarker:
    """Queued by a flush (or a durable wait); set once everything queued before it was
    handled, or at its own deadline."""

    __slots__ = ("deadline", "done", "durable", "hurry_at", "ok")

    def __init__(self, timeout: float, *, durable: bool = False) -> None:
        now = time.monotonic()
        self.done = threading.Event()
        self.durable = durable  # answered once committed *or spooled*
        self.ok = False
        self.deadline = now + timeout
        self.hurry_at = now + timeout / 2

    def answer(self, ok: bool) -> None:
        """Tell the waiting caller."""
        self.ok = ok
        self.done.set()


class Waits:
    """The writer's live and drained markers, and what they ask of it."""

    def __init__(self) -> None:
        self.live: list[WaitMarker] = []
        """Every marker not yet answered or forgotten (appended to by any thread)."""
        self.drained: list[WaitMarker] = []
        """Markers whose events the writer has folded (the writer's thread only)."""
        self.gave_up = False
        """A durable wait timed out on the database call in flight (set by its caller)."""
        self._loss_seen = 0  # losses already reported by an answered flush

    def add(self, marker: WaitMarker) -> None:
        """Start tracking *marker* (any thread; queue it behind its events after this)."""
        self.live.append(marker)

    def hurry(self, now: float) -> bool:
        """Whether a live marker is past half its timeout (answered ones are forgotten)."""
        hurry = False
        for marker in list(self.live):
            if marker.done.is_set():
                self.live.remove(marker)
            elif marker.hurry_at <= now:
                hurry = True
        return hurry

    def pause(self, now: float, interval: float) -> float:
        """How long the idle writer may sleep: *interval*, or less for a marker's hurry point
        or deadline."""
        pause = interval
        for marker in list(self.live):
            due = marker.hurry_at if marker.hurry_at > now else marker.deadline
            pause = min(pause, max(due - now, 0.001))
        return pause

    def durable_pending(self) -> bool:
        """Whether a durable wait is live."""
        return any(marker.durable for marker in list(self.live))

    def covered(self) -> list[WaitMarker]:
        """The drained durable waits not answered yet: a batch taken now holds their rows."""
        return [m for m in self.drained if m.durable and not m.done.is_set()]

    def answer(
        self,
        now: float,
        *,
        settled: bool,
        committed: bool,
        lost: int,
        durable_impossible: bool,
    ) -> None:
        """Answer each drained marker whose rows are handled, or whose deadline passed.

        Args:
            now: the monotonic time.
            settled: nothing pending, nothing in flight that is not spooled.
            committed: settled, and every row committed (none left in the spool).
            lost: events and rows lost so far (dropped, lost, refused by the database).
            durable_impossible: no spool and no database: a durable wait cannot be kept.
        """
        if not self.drained:
            return
        kept: list[WaitMarker] = []
        answered = False
        for marker in self.drained:
            if marker.done.is_set():
                continue
            if marker.durable and (settled or durable_impossible):
                marker.answer(settled)
            elif not marker.durable and committed:
                marker.answer(lost == self._loss_seen)
                answered = True
            elif now >= marker.deadline:
                marker.answer(False)
            else:
                kept.append(marker)
        if answered:
            self._loss_seen = lost
        self.drained = kept

    def fail_all(self) -> None:
        """Answer every marker ``False`` (the loop ended)."""
        for marker in self.drained + list(self.live):
            marker.answer(False)
        self.drained = []
