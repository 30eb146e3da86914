"""What the writer holds: run states, the rows waiting to be written, and the batch in flight.

:class:`PendingRows` folds events into each run's :class:`~.rows.RunState` and keeps
the runs changed since their last write (``dirty``) and the newest event of each step attempt.
:meth:`~PendingRows.take` renders them into a batch and remembers it as *in flight* until the
database answers: on success the ended runs are forgotten, on failure the batch's runs and
steps go back to pending unless newer events replaced them meanwhile. :meth:`~PendingRows.spool`
hands the rows to a callable that puts them on disk, optionally with the batch in flight
(rows then written twice are harmless). A value that cannot be used (a scalar where a list
belongs, a link that does not render) costs that value, counted in ``values_rejected``; an
event that cannot be folded at all, or a run row that cannot be rendered, costs that event or
row, counted in ``events_rejected``; each is logged at ERROR once per run id — never the
writer. Owned by the writer thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from exporters.history.capture import (
    StepEnd,
    StepStart,
    decode,
    drop_superseded_starts,
    run_id_of,
)
from exporters.history.rows import RunState, step_row

logger = logging.getLogger("flowtel.writer")

__all__ = ["PendingRows", "Rows"]

Rows = tuple[list[dict[str, Any]], list[dict[str, Any]]]
"""Run rows and step rows, ready to upsert or spool."""

# keyed by (run_id, span_id): span ids may repeat across runs (seeded default ids)
_Steps = dict[tuple[str, int], StepStart | StepEnd]


class PendingRows:
    """The writer's run states and unwritten rows.

    Args:
        service_name: stored in each run row.
        trace_url_template: the run's trace link template.
        context_keys: the context keys stored in ``server_id`` and ``device_type``.
    """

    def __init__(
        self,
        service_name: str | None,
        trace_url_template: str | None,
        context_keys: tuple[str, str],
    ) -> None:
        self.service_name = service_name
        self.trace_url_template = trace_url_template
        self.context_keys = context_keys
        self.runs: dict[str, RunState] = {}
        self.dirty: dict[str, RunState] = {}
        self.steps: _Steps = {}
        self.flight: tuple[dict[str, RunState], _Steps] | None = None
        self.flight_spooled = False
        self.step_conflicts = 0
        """Step events dropped because another step of their run holds their span id."""
        self.values_rejected = 0
        """Values left out of a row (stored without them) because they could not be used."""
        self.events_rejected = 0
        """Events that could not be folded, and run rows that could not be rendered."""
        self._logged: set[str] = set()  # run ids whose rejection was logged

    def __bool__(self) -> bool:
        return bool(self.dirty or self.steps)

    def __len__(self) -> int:
        return len(self.dirty) + len(self.steps)

    @property
    def settled(self) -> bool:
        """Nothing pending, and no batch in flight that is not also spooled."""
        return not self and (self.flight is None or self.flight_spooled)

    def fold(self, events: Iterable[Any]) -> None:
        """Fold *events* (in queue order) into run states and pending step rows."""
        raws = list(events)
        with contextlib.suppress(Exception):  # a malformed tuple: each is looked at below
            raws = drop_superseded_starts(raws)
        for raw in raws:
            try:
                self._fold_one(raw)
            except Exception as exc:
                self.events_rejected += 1
                self._log_rejected(_run_id_of(raw), f"an event could not be folded ({exc!r})")

    def _fold_one(self, raw: Any) -> None:
        runs, dirty, steps = self.runs, self.dirty, self.steps
        event = decode(raw)
        if isinstance(event, (StepStart, StepEnd)):
            # queue order: an end follows its start
            key = (event.run_id, event.span_id)
            held = steps.get(key)
            if held is not None and (held.step_index, held.attempt) != (
                event.step_index,
                event.attempt,
            ):
                self.step_conflicts += 1  # another step's row: keep the first, as the DB does
                logger.warning(
                    "flowtel kept step %s of run %s and not step %s: both have span id %s",
                    held.step_index,
                    event.run_id,
                    event.step_index,
                    event.span_id,
                )
            else:
                steps[key] = event
            run = runs.get(event.run_id)
            if run is None:
                return  # the run's own span was not seen (yet): its end will carry all
        else:
            run = runs.get(event.run_id)
            if run is None:
                run = RunState(event.run_id, self.service_name, self.trace_url_template)
                runs[event.run_id] = run
        run.apply(event)
        if run.known:
            dirty[event.run_id] = run
        if run.rejected:
            self._count_rejected(run)

    def _count_rejected(self, run: RunState) -> None:
        self.values_rejected += len(run.rejected)
        self._log_rejected(run.run_id, "stored without " + ", ".join(run.rejected))
        run.rejected.clear()

    def _log_rejected(self, run_id: str, what: str) -> None:
        if run_id in self._logged:
            return
        if len(self._logged) >= 10_000:
            self._logged.clear()  # bounded: a flood of bad runs is logged again, not kept
        self._logged.add(run_id)
        logger.error(
            "flowtel could not use a value of run %s: %s (counted in values_rejected and "
            "events_rejected; logged once per run)",
            run_id,
            what,
        )

    def drop_oldest_steps(self, keep: int) -> int:
        """Forget all but the newest *keep* pending step rows; return how many were dropped."""
        excess = len(self.steps) - keep
        for key in list(self.steps)[: max(excess, 0)]:
            del self.steps[key]
        return max(excess, 0)

    def active_run_ids(self) -> list[str]:
        """Runs started and not ended (their heartbeat is this writer's job)."""
        return [run_id for run_id, run in self.runs.items() if run.known and not run.is_final]

    def take(self) -> Rows:
        """Render the pending rows as the batch in flight (there must be none)."""
        rows = self._render(self.dirty, self.steps)
        self.flight = (self.dirty, self.steps)
        self.dirty, self.steps = {}, {}
        return rows

    def landed(self, ok: bool) -> None:
        """The batch in flight committed (*ok*) or failed (its rows are pending again)."""
        assert self.flight is not None
        (runs, steps), self.flight = self.flight, None
        if self.flight_spooled:
            self.flight_spooled = False  # spooled meanwhile: nothing to do either way
        elif ok:
            for run_id, run in runs.items():
                if run.is_final and run_id not in self.dirty:
                    self.runs.pop(run_id, None)
        else:
            for run_id, run in runs.items():
                self.dirty.setdefault(run_id, run)
            for key, event in steps.items():
                self.steps.setdefault(key, event)  # a newer event of the step wins

    def spool(self, put: Callable[[Rows], tuple[int, int]], *, with_flight: bool = False) -> bool:
        """Render the pending rows (with the batch in flight) for *put*, which returns how many
        of the run rows and of the step rows it took (a prefix of each: it may split a batch
        the disk has no room for); forget what it took. True if it took everything."""
        runs, steps = dict(self.dirty), dict(self.steps)
        flight = self.flight if with_flight and not self.flight_spooled else None
        if flight is not None:
            for run_id, run in flight[0].items():
                runs.setdefault(run_id, run)
            for key, event in flight[1].items():
                steps.setdefault(key, event)
        run_keys, run_rows = self._render_runs(runs)
        step_keys, step_rows = self._render_steps(steps)
        took_runs, took_steps = put((run_rows, step_rows))
        everything = took_runs == len(run_rows) and took_steps == len(step_rows)
        if everything:
            self.flight_spooled = self.flight_spooled or flight is not None
            for run_id, run in runs.items():
                if run.is_final:
                    self.runs.pop(run_id, None)
            self.dirty.clear()
            self.steps.clear()
            return True
        for run_id in run_keys[:took_runs]:
            self.dirty.pop(run_id, None)
            if runs[run_id].is_final:
                self.runs.pop(run_id, None)
        for key in step_keys[:took_steps]:
            self.steps.pop(key, None)
        if flight is not None:  # the rest of the batch in flight waits with the pending rows
            for run_id in run_keys[took_runs:]:
                self.dirty.setdefault(run_id, runs[run_id])
            for key in step_keys[took_steps:]:
                self.steps.setdefault(key, steps[key])
            self.flight_spooled = True
        return False

    def _render(self, runs: dict[str, RunState], steps: _Steps) -> Rows:
        return self._render_runs(runs)[1], self._render_steps(steps)[1]

    def _render_runs(self, runs: dict[str, RunState]) -> tuple[list[str], list[dict[str, Any]]]:
        keys, rows = [], []
        for run_id, run in runs.items():
            try:
                rows.append(run.row(self.context_keys))
                keys.append(run_id)
            except Exception as exc:
                self.events_rejected += 1
                self._log_rejected(run.run_id, f"its row could not be rendered ({exc!r})")
            if run.rejected:
                self._count_rejected(run)
        return keys, rows

    def _render_steps(self, steps: _Steps) -> tuple[list[tuple[str, int]], list[dict[str, Any]]]:
        keys, rows = [], []
        for key, event in steps.items():
            try:
                rows.append(step_row(event))
                keys.append(key)
            except Exception as exc:
                self.events_rejected += 1
                self._log_rejected(event.run_id, f"a step row could not be rendered ({exc!r})")
        return keys, rows


def _run_id_of(raw: Any) -> str:
    try:
        return run_id_of(raw)
    except Exception:
        return "(unknown)"
