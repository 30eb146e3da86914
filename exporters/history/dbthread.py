"""The writer's database calls, one at a time, on a thread of their own.

The writer thread folds events and decides where rows go; it never waits on the database
itself. It hands each call (commit a batch, replay a spool chunk, heartbeat, probe) to a
:class:`DatabaseThread` and collects the outcome on a later turn of its loop. So a call that
hangs (a network partition without ``connect_timeout``, a lock held by a migration, SQLite's
busy wait) never stops the writer from draining the queue into the spool or from meeting a
flush deadline: rows of a call still in flight are spooled as well, which is harmless because
the upserts are idempotent. Calls run with instrumentation suppressed, so the writer's own SQL
is never traced. ``os.fork()`` waits (up to ``FORK_WAIT`` seconds) for the call in flight to
end: a fork that lands while this thread is inside a driver's C code can leave one of its
process-wide locks held forever in the child (SQLite's are, at every allocation), so that the
child's first ``connect()`` never returns.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

from opentelemetry import context as otel_context

__all__ = ["FORK_WAIT", "DatabaseThread", "Outcome"]

FORK_WAIT = 5.0
"""Seconds ``os.fork()`` waits for a database call in flight to end."""


class Outcome(NamedTuple):
    """How one call ended: its kind, its return value, or the exception it raised."""

    kind: str
    value: Any
    error: Exception | None


class DatabaseThread:
    """Runs one call at a time on a daemon thread started on first use.

    Args:
        notify: called (on the database thread) after each call, to wake the writer.
    """

    def __init__(self, notify: Callable[[], None]) -> None:
        self._notify = notify
        self._job: tuple[str, Callable[[], Any]] | None = None
        self.started_at = 0.0
        """When the call in flight was submitted (``time.monotonic()``)."""
        self._outcome: Outcome | None = None
        self._submitted = threading.Event()
        self._finished = threading.Event()
        self._calling = threading.Lock()  # held during each call, and across os.fork()
        self._held_for_fork = False
        self._stopping = False
        self._cleanup: Callable[[], None] | None = None
        self._cleanup_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    @property
    def idle(self) -> bool:
        """No call is running and no outcome waits to be collected."""
        return self._job is None

    @property
    def running(self) -> str | None:
        """The kind of the call in flight (or finished and not yet collected)."""
        job = self._job
        return job[0] if job is not None else None

    def submit(self, kind: str, call: Callable[[], Any]) -> None:
        """Start *call* (the thread must be idle)."""
        if self._job is not None:
            raise RuntimeError("a database call is already in flight")
        self._job = (kind, call)
        self.started_at = time.monotonic()
        self._finished.clear()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="flowtel-history-db", daemon=True
            )
            self._thread.start()
        self._submitted.set()

    def collect(self) -> Outcome | None:
        """The outcome of the finished call, once; ``None`` while it runs or when idle."""
        outcome = self._outcome
        if outcome is None:
            return None
        self._outcome = None
        self._job = None
        return outcome

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the call in flight to finish."""
        return self._finished.wait(max(timeout, 0.0))

    def stop(self, cleanup: Callable[[], None] | None = None) -> None:
        """End the thread now if no call runs, else as soon as the call in flight returns (a
        call that never returns is abandoned with the daemon thread). *cleanup* releases what
        the calls used, such as a kept connection, once and only when no call can be using
        it: here and now if no call runs (finished, collected or not), else on the database
        thread right after the call in flight returns."""
        self._cleanup = cleanup
        self._stopping = True  # after _cleanup: the thread reads it once it sees this
        if self._thread is None or self._job is None or self._finished.is_set():
            self._run_cleanup()
            if self._thread is not None:
                self._job = ("stop", _stop)
                self._submitted.set()

    def _run_cleanup(self) -> None:
        with self._cleanup_lock:  # the caller and the thread may both get here: once
            cleanup, self._cleanup = self._cleanup, None
        if cleanup is not None:
            cleanup()

    def _run(self) -> None:
        token = otel_context.attach(
            otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        try:
            while True:
                self._submitted.wait()
                self._submitted.clear()
                job = self._job
                if job is None:
                    continue
                kind, call = job
                if call is _stop:
                    return
                with self._calling:
                    try:
                        outcome = Outcome(kind, call(), None)
                    except Exception as exc:
                        outcome = Outcome(kind, None, exc)
                self._outcome = outcome
                self._finished.set()
                self._notify()
                if self._stopping:
                    self._run_cleanup()
                    return
        finally:
            otel_context.detach(token)


def _stop() -> None:  # pragma: no cover - a marker, never called
    """The job that ends the thread."""


_LIVE: weakref.WeakSet[DatabaseThread] = weakref.WeakSet()


def _before_fork() -> None:
    for thread in list(_LIVE):
        thread._held_for_fork = thread._calling.acquire(timeout=FORK_WAIT)


def _after_fork_in_parent() -> None:
    for thread in list(_LIVE):
        if thread._held_for_fork:
            thread._held_for_fork = False
            thread._calling.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)
