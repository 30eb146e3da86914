"""How two runs differ, step by step, and which steps ran slower than their workflow usually does.

:func:`diff_runs` pairs the steps of two runs by name (a step that ran several attempts is one
entry: its last attempt's status, message and error, its attempt count and the time all its
attempts took), and lists the status, attempt, duration, message, error, input and output
changes, the steps only one run has, and the context keys whose values differ. Inputs and
outputs are compared as recorded (redacted, bounded JSON); a step that recorded none has
``None``. :func:`step_baselines` gives each
step's p95 duration over a workflow's last completed runs (interpolated as ``percentile_cont``);
a step whose time is above its baseline is flagged slow, in a diff and in ``flowtel show``.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from exporters.db.json import dumps_text
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.query.records import Record, RunDetail, RunSummary, StepRecord
from exporters.query.stats import percentile
from instrumentation.attributes import RunStatus, StepStatus

__all__ = [
    "BASELINE_RUNS",
    "SLOW_MARK",
    "ContextChange",
    "RunDiff",
    "StepChange",
    "StepSide",
    "diff_runs",
    "last_completed_runs",
    "recorded_text",
    "step_baselines",
    "summarise_steps",
]

SLOW_MARK = "*"
"""How the command line marks a duration above its step's p95 (``flowtel show`` and ``diff``)."""

BASELINE_RUNS = 100
"""How many of a workflow's latest completed runs a step's p95 is computed over."""

_H, _S = workflow_history.c, workflow_step_history.c
_MISSING = object()
_TIMED = (StepStatus.COMPLETED, StepStatus.FAILED)  # a skipped step's time says nothing


@dataclasses.dataclass(frozen=True, slots=True)
class StepSide(Record):
    """One step as one run ran it: its last attempt, how many attempts, and their total time."""

    step_index: int
    status: str
    attempts: int
    duration_ms: int | None
    message: str | None
    error_type: str | None
    error_message: str | None
    input: Any
    """What the last attempt was given, as recorded (``None`` where nothing was recorded)."""
    output: Any
    """What the last attempt returned, as recorded (``None`` where nothing was recorded)."""
    slow: bool
    """Completed or failed after longer than the step's p95 over the workflow's last completed
    runs."""


@dataclasses.dataclass(frozen=True, slots=True)
class StepChange(Record):
    """One step name in either run, with what changed between them."""

    step_name: str
    a: StepSide | None
    b: StepSide | None
    status_changed: bool
    attempts_changed: bool
    duration_change_ms: int | None
    message_changed: bool
    error_changed: bool
    input_changed: bool
    output_changed: bool
    baseline_p95_ms: float | None

    @property
    def changed(self) -> bool:
        """Whether anything but the duration differs (or the step is in one run only)."""
        return (
            self.a is None
            or self.b is None
            or self.status_changed
            or self.attempts_changed
            or self.message_changed
            or self.error_changed
            or self.input_changed
            or self.output_changed
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ContextChange(Record):
    """A context key whose value differs (``None`` where a run does not have the key)."""

    key: str
    a: Any
    b: Any


@dataclasses.dataclass(frozen=True, slots=True)
class RunDiff(Record):
    """Run *b* against run *a*: their summaries, each step's changes, the context's changes."""

    a: RunSummary
    b: RunSummary
    duration_change_ms: int | None
    steps: list[StepChange]
    only_in_a: list[str]
    only_in_b: list[str]
    context: list[ContextChange]
    baseline_runs: int
    """How many completed runs of *a*'s workflow the slow-step baselines were computed over."""


def last_completed_runs(
    conn: Connection, workflow_name: str | None, *, limit: int, exclude: Sequence[str] = ()
) -> list[str]:
    """The run ids of *workflow_name*'s latest completed runs, newest first."""
    query = (
        select(_H.run_id)
        .where(_H.status == RunStatus.COMPLETED, _H.workflow_name == workflow_name)
        .order_by(_H.started_at.desc(), _H.id.desc())
        .limit(limit + len(exclude))
    )
    found = [row.run_id for row in conn.execute(query) if row.run_id not in exclude]
    return found[:limit]


def step_baselines(
    conn: Connection, workflow_name: str | None, *, runs: int = BASELINE_RUNS
) -> tuple[dict[str, float], int]:
    """Each step's p95 duration (ms) over the workflow's last *runs* completed runs, and how
    many runs that was. Only completed attempts count; a step seen in fewer than two runs
    gets no baseline."""
    run_ids = last_completed_runs(conn, workflow_name, limit=runs)
    if not run_ids:
        return {}, 0
    durations: dict[str, list[float]] = defaultdict(list)
    query = select(_S.run_id, _S.step_name, _S.duration_ms).where(
        _S.run_id.in_(run_ids), _S.status == StepStatus.COMPLETED, _S.duration_ms.is_not(None)
    )
    per_run: dict[tuple[str, str], float] = defaultdict(float)
    for row in conn.execute(query):
        per_run[(row.run_id, row.step_name)] += float(row.duration_ms)
    for (_, name), ms in per_run.items():
        durations[name].append(ms)
    baselines = {}
    for name, values in durations.items():
        if len(values) >= 2:
            p95 = percentile(sorted(values), 0.95)
            if p95 is not None:
                baselines[name] = p95
    return baselines, len(run_ids)


def summarise_steps(
    steps: Sequence[StepRecord], baselines: dict[str, float]
) -> dict[str, StepSide]:
    """One :class:`StepSide` per step name, in the order the steps first ran."""
    attempts: dict[str, list[StepRecord]] = {}
    for step in steps:
        attempts.setdefault(step.step_name, []).append(step)
    sides = {}
    for name, tries in attempts.items():
        last = tries[-1]
        known = [t.duration_ms for t in tries if t.duration_ms is not None]
        total = sum(known) if known else None
        p95 = baselines.get(name)
        sides[name] = StepSide(
            step_index=tries[0].step_index,
            status=last.status,
            attempts=len(tries),
            duration_ms=total,
            message=last.message,
            error_type=last.error_type,
            error_message=last.error_message,
            input=last.input,
            output=last.output,
            slow=last.status in _TIMED and total is not None and p95 is not None and total > p95,
        )
    return sides


def diff_runs(
    a: RunDetail, b: RunDetail, baselines: dict[str, float], baseline_runs: int
) -> RunDiff:
    """Compare run *b* with run *a* (steps paired by name; see the module's docstring)."""
    sides_a = summarise_steps(a.steps, baselines)
    sides_b = summarise_steps(b.steps, baselines)
    names = list(sides_a) + [name for name in sides_b if name not in sides_a]
    names.sort(key=lambda n: (sides_a.get(n) or sides_b[n]).step_index)
    changes = [_change(name, sides_a.get(name), sides_b.get(name), baselines) for name in names]
    keys = list(a.context) + [key for key in b.context if key not in a.context]
    context = [
        ContextChange(key, a.context.get(key), b.context.get(key))
        for key in keys
        if a.context.get(key, _MISSING) != b.context.get(key, _MISSING)
    ]
    return RunDiff(
        a=_summary(a),
        b=_summary(b),
        duration_change_ms=_delta(a.duration_ms, b.duration_ms),
        steps=changes,
        only_in_a=[name for name in sides_a if name not in sides_b],
        only_in_b=[name for name in sides_b if name not in sides_a],
        context=context,
        baseline_runs=baseline_runs,
    )


def _change(
    name: str, a: StepSide | None, b: StepSide | None, baselines: dict[str, float]
) -> StepChange:
    if a is None or b is None:
        return StepChange(
            name, a, b, False, False, None, False, False, False, False, baselines.get(name)
        )
    return StepChange(
        step_name=name,
        a=a,
        b=b,
        status_changed=a.status != b.status,
        attempts_changed=a.attempts != b.attempts,
        duration_change_ms=_delta(a.duration_ms, b.duration_ms),
        message_changed=a.message != b.message,
        error_changed=(a.error_type, a.error_message) != (b.error_type, b.error_message),
        input_changed=a.input != b.input,
        output_changed=a.output != b.output,
        baseline_p95_ms=baselines.get(name),
    )


def recorded_text(value: object) -> str:
    """A step's recorded input or output as one line of JSON (keys sorted), ``-`` for none."""
    return "-" if value is None else dumps_text(value, sort_keys=True)


def _delta(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else b - a


def _summary(run: RunDetail) -> RunSummary:
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(RunSummary)}
    return RunSummary(**fields)
