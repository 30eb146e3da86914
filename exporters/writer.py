"""The history writer: folds queued events per run and writes them in batches.

Runs on the processor's own thread, never on the application's. Each batch is one
transaction holding one multi-row upsert for runs and one for steps. A failed batch is kept
(the runs stay dirty, the step rows stay pending) and retried with exponential backoff while
new events keep being folded in, so an outage costs memory bounded by the active runs plus
``max_pending_steps`` step rows; the first failure is logged once, with the database URL's
password masked, and recovery is logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from .bulk import bulk_upsert_rows
from .database import display_url
from .events import StepEnd, StepStart, decode
from .schema import create_schema
from .state import RunState, step_row

__all__ = ["HistoryWriter", "WriterStats"]

logger = logging.getLogger("flowtel.writer")


@dataclass
class WriterStats:
    """Counters describing the writer's health (read them from any thread)."""

    batches_written: int = 0
    runs_written: int = 0
    steps_written: int = 0
    write_errors: int = 0
    retries: int = 0
    steps_dropped: int = 0
    last_error: str | None = field(default=None)


class HistoryWriter:
    """Turns events into rows and commits them; owned by one thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        create_tables: bool = True,
        service_name: str | None = None,
        context_keys: tuple[str, str] = ("server_id", "device_type"),
        trace_url_template: str | None = None,
        max_pending_steps: int = 200_000,
        max_backoff: float = 5.0,
    ) -> None:
        self.engine = engine
        self.stats = WriterStats()
        self._create_tables = create_tables
        self._service_name = service_name
        self._context_keys = context_keys
        self._trace_url_template = trace_url_template
        self._max_pending_steps = max_pending_steps
        self._max_backoff = max_backoff
        self._runs: dict[str, RunState] = {}
        self._dirty: dict[str, RunState] = {}
        self._steps: dict[int, StepStart | StepEnd] = {}
        self._failing_since: float | None = None
        self._backoff = 0.0
        self._retry_at = 0.0

    @property
    def has_pending(self) -> bool:
        """Whether rows are waiting to be written (after a failure, or not yet flushed)."""
        return bool(self._dirty or self._steps)

    @property
    def active_runs(self) -> int:
        """Runs started and not yet ended, as far as this writer has seen."""
        return len(self._runs)

    def fold(self, events: Iterable[Any]) -> None:
        """Fold *events* (in queue order) into run states and pending step rows."""
        runs, dirty, steps = self._runs, self._dirty, self._steps
        for raw in events:
            event = decode(raw)
            if isinstance(event, (StepStart, StepEnd)):
                steps[event.span_id] = event  # queue order: an end follows its start
                run = runs.get(event.run_id)
                if run is None:
                    continue  # the run's own span was not seen (yet): its end will carry all
            else:
                run = runs.get(event.run_id)
                if run is None:
                    run = RunState(event.run_id, self._service_name, self._trace_url_template)
                    runs[event.run_id] = run
            run.apply(event)
            if run.known:
                dirty[event.run_id] = run
        self._bound_pending_steps()

    def _bound_pending_steps(self) -> None:
        excess = len(self._steps) - self._max_pending_steps
        if excess <= 0:
            return
        for key in list(self._steps)[:excess]:
            del self._steps[key]
        self.stats.steps_dropped += excess

    def prepare(self) -> None:
        """Create the tables now if asked to (a failure is retried before the first write)."""
        if not self._create_tables:
            return
        try:
            create_schema(self.engine)
            self._create_tables = False
        except Exception as exc:
            self._failed(exc)

    def ready(self, now: float | None = None) -> bool:
        """Whether a write may be attempted now (not inside a retry backoff)."""
        return (now if now is not None else time.monotonic()) >= self._retry_at

    def write(self) -> bool:
        """Write every pending row in one transaction; return whether it committed."""
        if not self.has_pending:
            return True
        dirty = self._dirty
        run_rows = [run.row(self._context_keys) for run in dirty.values()]
        step_rows = [step_row(event) for event in self._steps.values()]
        try:
            if self._create_tables:
                create_schema(self.engine)
                self._create_tables = False
            with self.engine.begin() as connection:
                bulk_upsert_rows(connection, run_rows, step_rows)
        except Exception as exc:
            self._failed(exc)
            return False
        self._succeeded(len(run_rows), len(step_rows))
        for run_id, run in dirty.items():
            if run.is_final:
                self._runs.pop(run_id, None)
        dirty.clear()
        self._steps.clear()
        return True

    def _failed(self, exc: Exception) -> None:
        stats = self.stats
        stats.write_errors += 1
        stats.last_error = f"{type(exc).__name__}: {_first_line(exc)}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            logger.error(
                "flowtel cannot write workflow history to %s (%s); "
                "keeping rows in memory and retrying in the background",
                display_url(self.engine.url),
                stats.last_error,
            )
        else:
            stats.retries += 1
        self._backoff = min(self._max_backoff, max(0.05, self._backoff * 2))
        self._retry_at = time.monotonic() + self._backoff

    def _succeeded(self, runs: int, steps: int) -> None:
        stats = self.stats
        stats.batches_written += 1
        stats.runs_written += runs
        stats.steps_written += steps
        if self._failing_since is not None:
            logger.warning(
                "flowtel writes workflow history to %s again after %.1f s",
                display_url(self.engine.url),
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        self._backoff = 0.0
        self._retry_at = 0.0


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
