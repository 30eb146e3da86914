"""The retention pass in the background: a policy applied at most once an interval (an hour).

:class:`RetentionRunner` owns one daemon thread that applies a :class:`RetentionPolicy` to a
database a short while after it starts and then once every ``interval`` seconds, in batches of
``batch_size`` runs, each its own short transaction, so writers wait at most one batch. The
pass runs beside the history writer on its own connections (the writer's code is unchanged);
``configure(retention=...)`` and ``flowtel ingest --retention`` start one and stop it on
shutdown. A pass that fails (database down, lock timeout) is logged at WARNING with the error's
first line and tried again at the next interval; every completed pass is logged by
:func:`~exporters.ops.policy.apply_policy` with the rows it removed.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from exporters.ops.policy import PolicyResult, RetentionPolicy, apply_policy

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_FIRST_DELAY_S", "DEFAULT_INTERVAL_S", "RetentionRunner"]

DEFAULT_INTERVAL_S = 3600.0
"""Seconds between two passes: at most one an hour."""
DEFAULT_FIRST_DELAY_S = 60.0
"""Seconds after start before the first pass (start-up belongs to the application)."""
DEFAULT_BATCH_SIZE = 500
"""Runs deleted per transaction by the background pass."""

logger = logging.getLogger("flowtel.retention")


class _Stopped(Exception):
    """Raised between two batches when the runner is stopped."""


class RetentionRunner:
    """Apply *policy* to *engine* in a background thread, at most once every *interval* s.

    Args:
        engine: the history database (its pool is shared with whoever else uses it).
        policy: what to keep.
        interval: seconds between passes (default one hour; at least 1).
        first_delay: seconds from :meth:`start` to the first pass.
        batch_size: runs deleted per transaction.
    """

    def __init__(
        self,
        engine: Engine,
        policy: RetentionPolicy,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        first_delay: float = DEFAULT_FIRST_DELAY_S,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be at least 1 second, not {interval}")
        self.engine = engine
        self.policy = policy
        self.interval = interval
        self.first_delay = max(first_delay, 0.0)
        self.batch_size = batch_size
        self.passes = 0
        """Passes completed."""
        self.failures = 0
        """Passes that failed (logged, retried at the next interval)."""
        self.last: PolicyResult | None = None
        """The last completed pass."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="flowtel-retention", daemon=True)

    def start(self) -> RetentionRunner:
        """Start the thread (once); returns ``self``."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
            logger.info(
                "flowtel retention: policy %s, a pass every %s s, the first in %s s",
                self.policy,
                f"{self.interval:g}",
                f"{self.first_delay:g}",
            )
        return self

    def run_once(self) -> PolicyResult | None:
        """Apply the policy now, in this thread; ``None`` if the pass failed (logged)."""
        try:
            result = apply_policy(
                self.engine, self.policy, batch_size=self.batch_size, progress=self._between
            )
        except _Stopped:
            logger.info("flowtel retention: stopped between two batches")
            return None
        except SQLAlchemyError as exc:
            self.failures += 1
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            logger.warning(
                "flowtel retention pass failed (tried again in %s s): %s: %s",
                f"{self.interval:g}",
                type(exc).__name__,
                first_line,
            )
            return None
        self.passes += 1
        self.last = result
        return result

    def _between(self, runs: int, steps: int) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _loop(self) -> None:
        wait = self.first_delay
        while not self._stop.wait(wait):
            started = time.monotonic()
            self.run_once()
            wait = max(self.interval - (time.monotonic() - started), 0.0)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop after the batch in progress; ``False`` if the thread is still busy at *timeout*
        (a hung database: the daemon thread is left behind, the process may exit)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()
