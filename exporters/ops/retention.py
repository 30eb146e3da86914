"""Retention: delete old runs and their step rows in bounded batches, never active ones.

:func:`prune` removes runs that started before ``now - older_than`` (optionally only those with
one status) together with their ``workflow_step_history`` rows. Each batch of at most
``batch_size`` runs is its own short transaction — steps first, then the runs — so a large
prune never holds long locks and an interrupted one leaves no orphaned steps behind. Runs
that are ``running`` or ``pending`` are never deleted, whatever the filters; runs without a
start time are kept (their age is unknown). Rows imported from the old system hold naive local
times that compare as UTC, so their cut-off is exact only to within that system's UTC offset.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from exporters.db.schema import workflow_history, workflow_step_history
from instrumentation.attributes import RunStatus

__all__ = ["ACTIVE_STATUSES", "PruneResult", "prune"]

ACTIVE_STATUSES: tuple[str, ...] = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
"""Statuses of runs that :func:`prune` never deletes."""

_H = workflow_history.c
_S = workflow_step_history.c


@dataclasses.dataclass(frozen=True, slots=True)
class PruneResult:
    """What :func:`prune` deleted (or, with ``dry_run``, would delete).

    Attributes:
        cutoff: runs that started before this instant were eligible.
        status: the status filter, if any.
        runs_deleted: run rows deleted (or matching, in a dry run).
        steps_deleted: their step rows deleted (or matching, in a dry run).
        batches: transactions committed (0 in a dry run).
        dry_run: whether nothing was deleted.
    """

    cutoff: dt.datetime
    status: str | None
    runs_deleted: int
    steps_deleted: int
    batches: int
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dictionary (the cut-off as ISO 8601 UTC)."""
        values = dataclasses.asdict(self)
        values["cutoff"] = self.cutoff.isoformat().replace("+00:00", "Z")
        return values


def _eligible(cutoff: dt.datetime, status: str | None) -> list[sa.ColumnElement[bool]]:
    conditions = [_H.started_at < cutoff, _H.status.not_in(ACTIVE_STATUSES)]
    if status is not None:
        conditions.append(_H.status == status)
    return conditions


def _count(connection: Connection, conditions: list[sa.ColumnElement[bool]]) -> tuple[int, int]:
    runs = connection.execute(sa.select(sa.func.count()).where(*conditions)).scalar_one()
    eligible_ids = sa.select(_H.run_id).where(*conditions)
    steps = connection.execute(
        sa.select(sa.func.count()).where(_S.run_id.in_(eligible_ids))
    ).scalar_one()
    return int(runs), int(steps)


def prune(
    engine: Engine,
    older_than: dt.timedelta,
    status: str | None = None,
    batch_size: int = 1000,
    *,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> PruneResult:
    """Delete runs that started more than *older_than* ago, and their steps, in batches.

    Args:
        engine: the history database.
        older_than: the minimum age of a run to delete (positive).
        status: delete only runs with this status (``running`` and ``pending`` are refused).
        batch_size: the most runs deleted per transaction.
        dry_run: count what would be deleted instead of deleting it.
        now: the reference time (default: the current time, UTC).
        progress: called after each committed batch with the runs and steps deleted so far.

    Returns:
        The cut-off and what was deleted.

    Raises:
        ValueError: *older_than* is not positive, *batch_size* is below 1, or *status* is
            an active status.
    """
    if older_than <= dt.timedelta(0):
        raise ValueError(f"older_than must be positive, not {older_than}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if status in ACTIVE_STATUSES:
        raise ValueError(f"prune never deletes {status!r} runs; they are still active")
    cutoff = (now or dt.datetime.now(dt.UTC)) - older_than
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=dt.UTC)
    conditions = _eligible(cutoff, status)
    if dry_run:
        with engine.connect() as connection:
            runs, steps = _count(connection, conditions)
        return PruneResult(cutoff, status, runs, steps, 0, True)
    runs = steps = batches = 0
    while True:
        with engine.begin() as connection:
            query = sa.select(_H.id, _H.run_id).where(*conditions).order_by(_H.id)
            chosen = connection.execute(query.limit(batch_size)).all()
            if not chosen:
                break
            run_ids = [row.run_id for row in chosen]
            steps += connection.execute(
                sa.delete(workflow_step_history).where(_S.run_id.in_(run_ids))
            ).rowcount
            runs += connection.execute(
                sa.delete(workflow_history).where(
                    _H.id.in_([row.id for row in chosen]), *conditions
                )
            ).rowcount
            batches += 1
        if progress is not None:
            progress(runs, steps)
        if len(chosen) < batch_size:
            break
    return PruneResult(cutoff, status, runs, steps, batches, False)
