"""The typed records the query API returns: runs, step attempts, statistics.

Every record is a frozen dataclass, so a web view can hold, compare and serialise it freely.
``to_json()`` turns one into a dictionary with stable keys, in field order, whose timestamps are
ISO 8601 UTC strings (``2026-11-01T12:00:03.250000Z``, :func:`iso_utc`: the one form of every
``--json`` output) and whose nested records are dictionaries too; the result always survives
``json.dumps``. :class:`RunSummary` is a row of a run listing, :class:`RunDetail` one run with
its step attempts, :class:`ActiveRun` a run still in progress.
:class:`StatsReport` holds :func:`~exporters.query.stats.compute_stats`'s figures per workflow.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any, Literal

from exporters.db.json import iso_utc
from instrumentation.attributes import StepStatus

__all__ = [
    "ActiveRun",
    "FailingStep",
    "GroupStats",
    "MatchedBy",
    "Record",
    "RunDetail",
    "RunSummary",
    "StatsReport",
    "StepRecord",
    "StepStats",
    "WorkflowStats",
    "iso_utc",
    "json_value",
    "written_times",
]

MatchedBy = Literal["run_id", "workflow_id", "prefix"]
"""How :meth:`~exporters.query.store.HistoryStore.get_run` resolved a reference."""


_WRITTEN_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(\+00:00|Z)")
_USER_KEYS = frozenset({"context_data"})  # the run's context: the user's values, as written


def written_times(value: Any) -> Any:
    """*value* (stored JSON flowtel wrote) with its UTC time strings in :func:`iso_utc`'s form.

    The writer stores times in the run's metadata as ``…+00:00``; read back, they are printed
    like every other time. Only whole strings that are a UTC time change, and the run's
    ``context_data`` (the user's values) is left exactly as recorded.
    """
    if isinstance(value, str) and _WRITTEN_TIME.fullmatch(value):
        return iso_utc(dt.datetime.fromisoformat(value))
    if isinstance(value, list):
        return [written_times(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k in _USER_KEYS else written_times(v) for k, v in value.items()}
    return value


def json_value(value: Any) -> Any:
    """Return *value* ready for ``json.dumps``: datetimes by :func:`iso_utc`, records as dicts.

    Naive datetimes are taken as UTC; lists, tuples and dictionaries are converted item by
    item; dataclasses that are not records become dictionaries of their fields.
    """
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, Record):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


class Record:
    """Base of the query API's dataclasses: adds :meth:`to_json`."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dictionary (fields in order, ISO 8601 UTC times)."""
        return {f.name: json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True)
class StepRecord(Record):
    """One step attempt, as stored in ``workflow_step_history``.

    Attributes:
        logs: the warning and error log lines recorded during the attempt, each a dictionary
            ``{at, severity, logger, message}`` (``None`` when there were none).
        input: what the attempt was given, as recorded (redacted, bounded JSON), or ``None``.
        output: what it returned, as recorded, or ``None``.
    """

    step_index: int
    step_name: str
    attempt: int
    status: str
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    duration_ms: int | None
    message: str | None
    error_type: str | None
    error_message: str | None
    error_stacktrace: str | None
    logs: Any
    span_id: str
    input: Any = None
    """What the attempt was given (JSON), where the step records it."""
    output: Any = None
    """What the attempt returned (JSON), where the step records it."""

    @property
    def log_lines(self) -> list[dict[str, Any]]:
        """The recorded log lines as dictionaries (an empty list when there are none)."""
        if not isinstance(self.logs, list):
            return []
        return [line if isinstance(line, dict) else {"message": str(line)} for line in self.logs]


@dataclasses.dataclass(frozen=True, slots=True)
class RunSummary(Record):
    """One run as listed by :meth:`~exporters.query.store.HistoryStore.list_runs`.

    ``current_step`` is the step running now, or for a failed run the step that failed.
    """

    run_id: str
    workflow_name: str | None
    workflow_id: str
    status: str
    server_id: str | None
    device_type: str | None
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    duration_ms: int | None
    steps_completed: int
    total_steps: int
    current_step: str | None
    error_type: str | None
    error_message: str | None
    trace_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class RunDetail(RunSummary):
    """One run with every column and its step attempts, from ``HistoryStore.get_run``.

    ``to_json()`` adds two derived keys after the fields: ``trace_url`` and ``failed_step``
    (the failing attempt as a step object, or ``null``).

    Attributes:
        metadata: the ``metadata`` JSON column (``{}`` when absent or not an object).
        steps: the step attempts ordered by ``step_index`` then ``attempt``.
        matched_by: how the reference was resolved: ``run_id``, ``workflow_id`` or ``prefix``.
        other_runs: how many other runs share this run's ``workflow_id``.
    """

    span_id: str | None
    parent_run_id: str | None
    service_name: str | None
    host: str | None
    pid: int | None
    updated_at: dt.datetime | None
    metadata: dict[str, Any]
    steps: list[StepRecord]
    matched_by: MatchedBy
    other_runs: int

    @property
    def context(self) -> dict[str, Any]:
        """The run's context as recorded (already redacted) in ``metadata.context_data``."""
        value = self.metadata.get("context_data")
        return value if isinstance(value, dict) else {}

    @property
    def failed_step(self) -> StepRecord | None:
        """The last attempt that ended ``failed``, if any."""
        return next((s for s in reversed(self.steps) if s.status == StepStatus.FAILED), None)

    @property
    def trace_url(self) -> str | None:
        """The link to the run's trace (``metadata.trace.url``), if one was configured."""
        trace = self.metadata.get("trace")
        if not isinstance(trace, dict):
            return None
        url = trace.get("url") or trace.get("link")
        return str(url) if url else None

    def to_json(self) -> dict[str, Any]:
        """Return the run as a JSON-ready dictionary, plus ``trace_url`` and ``failed_step``."""
        data = Record.to_json(self)
        data["metadata"] = written_times(data["metadata"])
        failed = self.failed_step
        data["trace_url"] = self.trace_url
        data["failed_step"] = failed.to_json() if failed is not None else None
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class ActiveRun(Record):
    """A run still ``pending`` or ``running``, from ``HistoryStore.active_runs``.

    Attributes:
        updated_at: the row's last write (step progress or heartbeat); a run whose process
            died stops advancing it.
    """

    run_id: str
    workflow_name: str | None
    workflow_id: str
    status: str
    server_id: str | None
    device_type: str | None
    current_step: str | None
    steps_completed: int
    total_steps: int
    started_at: dt.datetime | None
    updated_at: dt.datetime | None
    host: str | None
    pid: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class GroupStats(Record):
    """How the runs of one workflow (or one ``by`` group of it) ended, and how long they took.

    Attributes:
        group: the ``by`` value (``None`` for the workflow as a whole).
        runs: runs started in the window; ``running`` counts the ``pending`` ones too.
        success_rate: ``completed`` divided by the runs that ended (``None`` if none ended).
        p50_ms: the median duration of the completed runs (``p95_ms``, ``max_ms`` alike).
    """

    group: str | None
    runs: int
    completed: int
    failed: int
    cancelled: int
    abandoned: int
    running: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class StepStats(Record):
    """One step of a workflow: its attempts, how they ended and the median completed duration.

    Attributes:
        median_ms: the median duration of the completed attempts, taken over
            ``median_sample`` of them: all of them, unless the window holds more runs than
            :data:`exporters.query.stats.MEDIAN_SAMPLE_RUNS`.
    """

    step_index: int
    step_name: str
    attempts: int
    completed: int
    failures: int
    retries: int
    skipped: int
    median_ms: float | None
    median_sample: int
    p95_ms: float | None = None
    """The 95th percentile, over the same sample as ``median_ms``."""
    max_ms: float | None = None
    """The longest completed attempt in the window (every attempt, not a sample)."""


@dataclasses.dataclass(frozen=True, slots=True)
class TrendPoint(Record):
    """One interval of a workflow's trend: its runs by outcome and their durations.

    Attributes:
        start: the interval's start (intervals are aligned to the epoch: hours start on the
            hour, days at midnight UTC).
        p50_ms: the median duration of the interval's completed runs (``p95_ms`` alike).
    """

    start: dt.datetime
    runs: int
    completed: int
    failed: int
    cancelled: int
    abandoned: int
    running: int
    p50_ms: float | None
    p95_ms: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class FailingStep(Record):
    """A step that failed runs, with its most common error type and one message of it."""

    step_index: int
    step_name: str
    failures: int
    error_type: str | None
    error_count: int
    example_message: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class WorkflowStats(Record):
    """Everything :func:`~.stats.compute_stats` knows about one workflow over the window.

    Attributes:
        totals: the workflow's runs as a whole (``group`` is ``None``).
        steps: every step seen, by index.
        top_failing_steps: the steps with the most failed attempts, most first.
        groups: the runs split by the report's ``by`` value (empty without ``by``).
    """

    workflow_name: str
    totals: GroupStats
    steps: list[StepStats]
    top_failing_steps: list[FailingStep]
    groups: list[GroupStats]
    trend: list[TrendPoint] = dataclasses.field(default_factory=list)
    """Per interval of the report's ``every``, oldest first (empty without ``every``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class StatsReport(Record):
    """The statistics of the runs started in ``[since, until)``, workflows by name."""

    since: dt.datetime
    until: dt.datetime
    by: str | None
    workflows: list[WorkflowStats]
    every_s: int | None = None
    """The trend's interval in seconds (``None``: no trend asked for)."""
