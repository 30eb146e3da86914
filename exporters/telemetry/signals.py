"""Opt-in SIGTERM handling: end the process the way Python ends it on an exception.

What SIGTERM does without this: Python's default action kills the process at once. No
``finally`` block and no ``atexit`` hook runs, so the events still in the history processor's
queue (the last fraction of a second) are lost. Runs in progress stay ``running`` until
``flowtel reap`` marks them ``abandoned``. Rows already spooled survive and are replayed at the
next start. :func:`install_sigterm_handler` changes that. On SIGTERM it first flushes what is
queued (within the timeout; what the database cannot take is spooled), then raises
``SystemExit(143)`` in the main thread: ``with workflow_run(...)`` blocks unwind and record their
runs as ``cancelled``, and the exit hooks (``Flowtel.shutdown``, registered by ``configure()``)
write those. A handler that was installed before is called instead of exiting, and an ignored
SIGTERM stays ignored (after the flush).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

__all__ = ["Flushable", "install_sigterm_handler"]

logger = logging.getLogger("flowtel")


class Flushable(Protocol):
    """Anything with ``force_flush(timeout_millis)``: a :class:`~exporters.Flowtel` handle or
    a :class:`~exporters.WorkflowHistorySpanProcessor`."""

    def force_flush(self, timeout_millis: int = ...) -> bool:
        """Write what is queued; False if not all of it in time."""
        ...


def install_sigterm_handler(
    target: Flushable, *, timeout_millis: int = 5_000, exit_code: int = 128 + signal.SIGTERM
) -> Callable[[], None]:
    """Flush *target* on SIGTERM, then exit with *exit_code* (or chain the previous handler).

    Call it from the main thread (Python only lets the main thread install signal handlers).

    Args:
        target: what to flush.
        timeout_millis: the flush's budget; keep it well inside the grace period of whatever
            sends SIGTERM (Kubernetes waits 30 s by default before SIGKILL).
        exit_code: the status of the ``SystemExit`` raised after the flush (143, as a shell
            reports a process ended by SIGTERM).

    Returns:
        A function that puts the previous handler back.
    """
    previous: Any = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        try:
            target.force_flush(timeout_millis)
        except Exception:
            logger.exception("flowtel could not flush history on SIGTERM")
        if previous is signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)
            return
        raise SystemExit(exit_code)

    signal.signal(signal.SIGTERM, on_sigterm)

    def uninstall() -> None:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return uninstall
