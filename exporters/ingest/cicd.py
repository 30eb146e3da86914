"""OpenTelemetry's CI/CD conventions → the ``workflow.*`` span contract, for ingest.

The semantic conventions (``cicd.*``, Release Candidate) model a pipeline run — a span with
``cicd.pipeline.name``, ``cicd.pipeline.run.id`` and ``cicd.pipeline.result`` — and its task runs
— spans with ``cicd.pipeline.task.name``, ``cicd.pipeline.task.run.id`` and
``cicd.pipeline.task.run.result``. A CI system that emits them (the collector's GitHub receiver,
for one) gets the same history as a flowtel workflow: a pipeline run becomes a run, each task
run a step. A pipeline run is one trace, and a task span need not carry its pipeline's id, so
both derive the run id from the trace: ``cicd-<trace id>``. Task spans are numbered (the step
index) by start time within the request that carries them — the receiver sends a run's spans
together — and a result word becomes a status by :data:`RUN_RESULTS` / :data:`TASK_RESULTS`;
another word is refused, naming the attribute. A span that already carries ``workflow.run_id``
is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from instrumentation import attributes as attr
from instrumentation.attributes import RunStatus, StepStatus

__all__ = [
    "PIPELINE_NAME",
    "PIPELINE_RESULT",
    "PIPELINE_RUN_ID",
    "RUN_ID_PREFIX",
    "RUN_RESULTS",
    "TASK_NAME",
    "TASK_RESULT",
    "TASK_RESULTS",
    "TASK_RUN_ID",
    "UnknownResult",
    "run_id_for",
    "task_order",
    "workflow_attributes",
]

PIPELINE_NAME = "cicd.pipeline.name"
PIPELINE_RUN_ID = "cicd.pipeline.run.id"
PIPELINE_RESULT = "cicd.pipeline.result"
PIPELINE_RUN_URL = "cicd.pipeline.run.url.full"
TASK_NAME = "cicd.pipeline.task.name"
TASK_RUN_ID = "cicd.pipeline.task.run.id"
TASK_RESULT = "cicd.pipeline.task.run.result"
TASK_RUN_URL = "cicd.pipeline.task.run.url.full"
RUN_ID_PREFIX = "cicd-"

RUN_RESULTS: Mapping[str, RunStatus] = {
    "success": RunStatus.COMPLETED,
    "failure": RunStatus.FAILED,
    "error": RunStatus.FAILED,
    "timeout": RunStatus.FAILED,
    "cancellation": RunStatus.CANCELLED,
    "skip": RunStatus.CANCELLED,
}
"""``cicd.pipeline.result`` → the run's status."""

TASK_RESULTS: Mapping[str, StepStatus] = {
    "success": StepStatus.COMPLETED,
    "failure": StepStatus.FAILED,
    "error": StepStatus.FAILED,
    "timeout": StepStatus.FAILED,
    "cancellation": StepStatus.FAILED,
    "skip": StepStatus.SKIPPED,
}
"""``cicd.pipeline.task.run.result`` → the step's status."""

_RUN_KEYS = (PIPELINE_NAME, PIPELINE_RUN_ID, PIPELINE_RESULT)
_CONTEXT_KEYS = (PIPELINE_RUN_ID, PIPELINE_RUN_URL)


class UnknownResult(ValueError):
    """A result word the conventions do not define."""


def run_id_for(trace_id: bytes) -> str:
    """The run id of the pipeline run that is trace *trace_id*."""
    return RUN_ID_PREFIX + trace_id.hex()


def workflow_attributes(
    attributes: Mapping[str, Any], trace_id: bytes, failed: bool, index: int
) -> dict[str, Any] | None:
    """The ``workflow.*`` attributes a CI/CD span stands for (added to its own), or ``None``
    when it is no pipeline or task run (or already a flowtel span).

    Args:
        attributes: the span's attributes.
        trace_id: the span's trace id (the pipeline run's identity).
        failed: whether the span's status is ERROR (used when no result is given).
        index: the step index of a task span.

    Raises:
        UnknownResult: the result attribute holds a word the conventions do not define.
    """
    if attr.RUN_ID in attributes:
        return None
    if TASK_NAME in attributes:
        status = _status(attributes, TASK_RESULT, TASK_RESULTS, failed, StepStatus.FAILED)
        step: dict[str, Any] = {
            attr.RUN_ID: run_id_for(trace_id),
            attr.STEP_NAME: str(attributes[TASK_NAME]),
            attr.STEP_INDEX: index,
            attr.STEP_STATUS: status.value,
        }
        result = attributes.get(TASK_RESULT)
        if result not in (None, "success"):
            step[attr.STEP_MESSAGE] = f"{TASK_RESULT}={result}"
        if status is StepStatus.FAILED and attr.ERROR_TYPE not in attributes and result:
            step[attr.ERROR_TYPE] = str(result)
        return step
    if not any(key in attributes for key in _RUN_KEYS):
        return None
    status = _status(attributes, PIPELINE_RESULT, RUN_RESULTS, failed, RunStatus.FAILED)
    name = attributes.get(PIPELINE_NAME)
    run: dict[str, Any] = {
        attr.RUN_ID: run_id_for(trace_id),
        attr.RUN_STATUS: status.value,
    }
    if name is not None:
        run[attr.RUN_NAME] = run[attr.RUN_WORKFLOW_ID] = str(name)
    result = attributes.get(PIPELINE_RESULT)
    if status is RunStatus.FAILED and attr.ERROR_TYPE not in attributes and result:
        run[attr.ERROR_TYPE] = str(result)
    for key in _CONTEXT_KEYS:
        if key in attributes:
            run[attr.CONTEXT_PREFIX + key] = attributes[key]
    return run


def _status(
    attributes: Mapping[str, Any],
    key: str,
    table: Mapping[str, Any],
    failed: bool,
    on_error: Any,
) -> Any:
    result = attributes.get(key)
    if result is None:
        return on_error if failed else next(iter(table.values()))
    found = table.get(str(result))
    if found is None:
        raise UnknownResult(
            f"{key}={str(result)[:40]!r} is not a result the CI/CD conventions define; "
            f"send one of {', '.join(table)}"
        )
    return found


def task_order(spans: Iterable[tuple[bytes, bytes, int]]) -> dict[bytes, int]:
    """Step indexes (from 1) of task spans given as ``(trace id, span id, start)``: by start
    time (then span id) within each trace."""
    by_trace: dict[bytes, list[tuple[int, bytes]]] = {}
    for trace_id, span_id, start in spans:
        by_trace.setdefault(trace_id, []).append((start, span_id))
    order: dict[bytes, int] = {}
    for tasks in by_trace.values():
        for index, (_, span_id) in enumerate(sorted(tasks), start=1):
            order[span_id] = index
    return order
