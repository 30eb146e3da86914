"""Past the queue's cap, a step event goes to the spool on the caller's own thread, not away.

DESIGN: when the in-memory queue is full, events go straight to the spool instead of being
dropped. A step event renders to its row without any run state (:func:`~.rows.step_row`), so
:class:`OverflowSpools` lets the application's thread append it to a spool file of its own —
one per thread, so that no thread ever waits on a lock another holds across I/O (a thread
finding its file being sealed just takes a new one). The writer seals these files between its
batches (:meth:`OverflowSpools.seal`), which makes them replayable, and its replay commits them
like any spooled row; the upsert rules keep a replayed step start from overwriting a later end.
The cost is the caller's: a write and an ``fsync`` per overflowing event, which also slows the
producer to what the disk takes. The run's ``metadata.steps`` does not see these events (its
row is the writer's); the step rows and the run's final counts do.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from exporters.history.capture import StepEnd, StepStart, decode
from exporters.history.rows import step_row
from exporters.spool.files import Spool

__all__ = ["OverflowSpools"]


class _ThreadSpool:
    """One thread's overflow file, and the lock the writer takes to seal it."""

    __slots__ = ("lock", "retired", "rows", "spool")

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.lock = threading.Lock()
        self.rows = 0
        self.retired = False  # sealed by the writer: its thread takes a new one


class OverflowSpools:
    """The per-thread spool files that take step events past the queue's cap.

    Args:
        directory: the writer's spool directory.
        key: the database's spool key.
    """

    def __init__(self, directory: Path, key: str) -> None:
        self.directory = directory
        self.key = key
        self._local = threading.local()
        self._all: list[_ThreadSpool] = []  # appended to by application threads
        self._sealed_rows = 0
        self.errors = 0

    @property
    def rows(self) -> int:
        """Step rows spooled so far by the application's threads."""
        return self._sealed_rows + sum(mine.rows for mine in list(self._all))

    @property
    def unsealed(self) -> bool:
        """Whether some overflow file holds rows and is not sealed (not replayable) yet."""
        return any(mine.rows for mine in list(self._all))

    def append(self, raw: tuple[Any, ...]) -> bool:
        """On the application's thread: spool one captured step event; False if it could not
        be (the disk refused it, or the event is malformed: the caller drops and counts it)."""
        try:
            event = decode(raw)
        except Exception:
            return False
        if not isinstance(event, (StepStart, StepEnd)):
            return False
        mine: _ThreadSpool | None = getattr(self._local, "spool", None)
        if mine is not None and mine.lock.acquire(blocking=False):
            if mine.retired:
                mine.lock.release()
                mine = None
        else:
            mine = None  # never wait for the writer: a file of its own instead
        if mine is None:
            mine = _ThreadSpool(Spool(self.directory, self.key))
            mine.lock.acquire()
            self._local.spool = mine
            self._all.append(mine)
        try:
            mine.spool.append([], [step_row(event)])
            mine.rows += 1
        except Exception:
            self.errors += 1
            return False
        finally:
            mine.lock.release()
        return True

    def seal(self) -> None:
        """On the writer's thread: close every overflow file so that it can be replayed (an
        application thread reopens a new one with its next overflowing event)."""
        for mine in list(self._all):
            if not mine.rows:
                continue
            with mine.lock:
                mine.spool.seal()
                mine.retired = True
                self._sealed_rows += mine.rows
                mine.rows = 0
            self._all.remove(mine)

    def forget(self) -> None:
        """In a forked child: drop the inherited files without unlocking the parent's."""
        for mine in list(self._all):
            mine.spool.forget()
        self._all = []
        self._local = threading.local()
