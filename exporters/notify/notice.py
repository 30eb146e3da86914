"""The document ``flowtel notify`` sends for one finished run, built from its history row.

One JSON object per run: its ids, workflow, status, times, duration, the failed step (name,
index, attempt, error type and message) and the run's error, plus ``url``, the run's page on
``flowtel serve`` when a base URL is given. Values come from the history, already redacted
by the writer; nothing is read from the run's context beyond ``server_id`` and
``device_type``, so a notice carries no more than ``flowtel runs`` shows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from urllib.parse import quote

from exporters.query.records import RunDetail, json_value
from instrumentation.attributes import RunStatus

__all__ = ["NOTIFIED_STATUSES", "Notice", "notice_for"]

NOTIFIED_STATUSES: tuple[str, ...] = (
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.ABANDONED,
)
"""The statuses a run is finished with, in the order ``--status`` lists them."""


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """One finished run, ready to send (:meth:`to_json`)."""

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
    error_type: str | None
    error_message: str | None
    failed_step: dict[str, Any] | None
    trace_id: str | None
    url: str | None

    def to_json(self) -> dict[str, Any]:
        """The notice as a JSON-ready dictionary (times in flowtel's one ISO 8601 UTC form)."""
        data = {"event": "run.finished"}
        data.update(
            {f.name: json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}
        )
        return data


def notice_for(run: RunDetail, *, base_url: str | None = None) -> Notice:
    """Build the notice of *run*; ``url`` is ``{base_url}/runs/{run_id}`` when given."""
    failed = run.failed_step
    step = None
    if failed is not None:
        step = {
            "name": failed.step_name,
            "index": failed.step_index,
            "attempt": failed.attempt,
            "error_type": failed.error_type,
            "error_message": failed.error_message,
        }
    url = None
    if base_url:
        url = f"{base_url.rstrip('/')}/runs/{quote(run.run_id, safe='')}"
    return Notice(
        run_id=run.run_id,
        workflow_name=run.workflow_name,
        workflow_id=run.workflow_id,
        status=run.status,
        server_id=run.server_id,
        device_type=run.device_type,
        started_at=run.started_at,
        completed_at=run.completed_at,
        duration_ms=run.duration_ms,
        steps_completed=run.steps_completed,
        total_steps=run.total_steps,
        error_type=run.error_type,
        error_message=run.error_message,
        failed_step=step,
        trace_id=run.trace_id,
        url=url,
    )
