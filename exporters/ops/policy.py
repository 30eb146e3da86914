"""Retention as a policy: how long runs of each status are kept, applied in one pass.

A :class:`RetentionPolicy` is written ``completed=30d,failed=180d,cancelled=90d`` (the same text
for ``flowtel db prune --keep``, ``FLOWTEL_RETENTION``, ``configure(retention=...)`` and
``flowtel ingest --retention``): each named status is kept for its duration after the run
started, statuses not named are kept for ever, and ``pending``/``running`` cannot be named
(runs in progress never go). :func:`apply_policy` prunes each named status with
:func:`exporters.ops.retention.prune`, in batches that are each their own short transaction, and
logs the pass with the rows it removed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.engine import Engine

from exporters.ops.durations import duration_text, parse_duration
from exporters.ops.retention import ACTIVE_STATUSES, PruneResult, prune
from instrumentation.attributes import RunStatus

__all__ = [
    "RETENTION_ENV",
    "PolicyResult",
    "RetentionPolicy",
    "apply_policy",
    "policy_from_env",
]

RETENTION_ENV = "FLOWTEL_RETENTION"
"""The environment variable holding the policy of ``configure()`` and ``flowtel ingest``."""

logger = logging.getLogger("flowtel.retention")

_STATUSES = tuple(s.value for s in RunStatus if s.value not in ACTIVE_STATUSES)


@dataclasses.dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long runs of each finished status are kept (statuses not named: for ever).

    Attributes:
        keep: ``(status, age)`` pairs, sorted by status.
    """

    keep: tuple[tuple[str, dt.timedelta], ...]

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """Read ``completed=30d,failed=180d`` (durations as ``flowtel db prune`` takes them).

        Raises:
            ValueError: the text is empty, an item is not ``STATUS=DURATION``, a status is
                unknown, active (``pending``, ``running``) or named twice, or a duration is
                invalid; the message says which and what is accepted.
        """
        keep: dict[str, dt.timedelta] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            status, equals, duration = (piece.strip() for piece in item.partition("="))
            if not equals or not status or not duration:
                raise ValueError(
                    f"retention item {item!r}: expected STATUS=DURATION, e.g. completed=30d"
                )
            if status in ACTIVE_STATUSES:
                raise ValueError(
                    f"retention cannot name {status!r}: runs in progress are never deleted"
                )
            if status not in _STATUSES:
                raise ValueError(
                    f"retention names the unknown status {status!r}; use {', '.join(_STATUSES)}"
                )
            if status in keep:
                raise ValueError(f"retention names {status!r} twice")
            try:
                keep[status] = parse_duration(duration)
            except ValueError as exc:
                raise ValueError(f"retention {status}={duration}: {exc}") from None
        if not keep:
            raise ValueError(
                "retention policy is empty: give STATUS=DURATION items, e.g. "
                "completed=30d,failed=180d,cancelled=90d"
            )
        return cls(tuple(sorted(keep.items())))

    def __str__(self) -> str:
        return ",".join(f"{status}={duration_text(age)}" for status, age in self.keep)

    def to_json(self) -> dict[str, str]:
        """``{status: duration text}``."""
        return {status: duration_text(age) for status, age in self.keep}


def policy_from_env(environ: Mapping[str, str] | None = None) -> RetentionPolicy | None:
    """The policy in ``FLOWTEL_RETENTION``; ``None`` when unset, empty or ``off``.

    Raises:
        ValueError: the variable holds a policy that cannot be read (the message names it).
    """
    text = (os.environ if environ is None else environ).get(RETENTION_ENV, "").strip()
    if not text or text.lower() == "off":
        return None
    try:
        return RetentionPolicy.parse(text)
    except ValueError as exc:
        raise ValueError(f"{RETENTION_ENV}={text!r}: {exc}") from None


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyResult:
    """What one pass of a policy deleted (or, in a dry run, would delete), per status."""

    policy: RetentionPolicy
    results: tuple[PruneResult, ...]
    dry_run: bool

    @property
    def runs_deleted(self) -> int:
        """Runs deleted over all statuses."""
        return sum(r.runs_deleted for r in self.results)

    @property
    def steps_deleted(self) -> int:
        """Step rows deleted over all statuses."""
        return sum(r.steps_deleted for r in self.results)

    @property
    def batches(self) -> int:
        """Transactions committed over all statuses."""
        return sum(r.batches for r in self.results)

    def summary(self) -> str:
        """``completed 12, failed 0`` (runs per status)."""
        return ", ".join(f"{r.status} {r.runs_deleted}" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        """The pass as a JSON-ready dictionary (cut-offs as ISO 8601 UTC)."""
        return {
            "policy": self.policy.to_json(),
            "dry_run": self.dry_run,
            "runs_deleted": self.runs_deleted,
            "steps_deleted": self.steps_deleted,
            "batches": self.batches,
            "statuses": [r.to_json() for r in self.results],
        }


def apply_policy(
    engine: Engine,
    policy: RetentionPolicy,
    *,
    batch_size: int = 1000,
    dry_run: bool = False,
    now: dt.datetime | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> PolicyResult:
    """Delete the runs *policy* no longer keeps, status by status, in batches; log the pass.

    Args:
        engine: the history database.
        policy: what to keep.
        batch_size: the most runs deleted per transaction.
        dry_run: count what would be deleted instead of deleting it (not logged).
        now: the reference time (default: the current time, UTC).
        progress: called after each committed batch with the runs and steps deleted so far in
            this pass.

    Returns:
        What was deleted per status.
    """
    now = now or dt.datetime.now(dt.UTC)
    results: list[PruneResult] = []
    for status, age in policy.keep:
        before_runs = sum(r.runs_deleted for r in results)
        before_steps = sum(r.steps_deleted for r in results)

        def advance(
            runs: int, steps: int, runs0: int = before_runs, steps0: int = before_steps
        ) -> None:
            if progress is not None:
                progress(runs0 + runs, steps0 + steps)

        results.append(
            prune(engine, age, status, batch_size, dry_run=dry_run, now=now, progress=advance)
        )
    outcome = PolicyResult(policy, tuple(results), dry_run)
    if not dry_run:
        logger.info(
            "flowtel retention pass (%s): deleted %d runs (%s) and %d steps in %d batches",
            policy,
            outcome.runs_deleted,
            outcome.summary(),
            outcome.steps_deleted,
            outcome.batches,
        )
    return outcome
