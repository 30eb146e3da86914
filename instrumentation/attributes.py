"""The span contract: every attribute name, status value and tracer name flowtel uses.

Producers (this package) and consumers (``exporters``) read names from here and nowhere else,
so a renamed attribute is one edit. Workflow and step spans carry ``workflow.run_id`` from the
moment they are created, which lets a sampler recognise them before they exist; run and step
statuses are string enums whose values are what the history tables store.
"""

from __future__ import annotations

import enum

__all__ = [
    "ACTIVE_RUN_STATUSES",
    "CONTEXT_PREFIX",
    "ERROR_TYPE",
    "FINAL_RUN_STATUSES",
    "HISTORY_ONLY",
    "INSTRUMENTATION_NAME",
    "LOG_EVENT",
    "LOG_LOGGER",
    "LOG_MESSAGE",
    "LOG_SEVERITY",
    "RUN_CONTEXT_JSON",
    "RUN_DECLARED_STEPS",
    "RUN_DESCRIPTION",
    "RUN_ID",
    "RUN_NAME",
    "RUN_PARENT_RUN_ID",
    "RUN_STATUS",
    "RUN_STEPS_COMPLETED",
    "RUN_TOTAL_STEPS",
    "RUN_WORKFLOW_ID",
    "SIGNAL",
    "SIGNAL_START",
    "STEP_ATTEMPT",
    "STEP_DESCRIPTION",
    "STEP_INDEX",
    "STEP_INPUT",
    "STEP_MESSAGE",
    "STEP_NAME",
    "STEP_OUTPUT",
    "STEP_STATUS",
    "RunStatus",
    "StepStatus",
]

INSTRUMENTATION_NAME = "flowtel"
"""Name of the tracer that creates workflow and step spans."""

# --- workflow (run) span, set at start -------------------------------------------------------
RUN_ID = "workflow.run_id"
"""Unique id of one execution; on every workflow *and* step span, at creation."""
RUN_WORKFLOW_ID = "workflow.id"
"""Logical id (``provision_<server>``); re-running it makes a new run."""
RUN_NAME = "workflow.name"
RUN_DESCRIPTION = "workflow.description"
RUN_TOTAL_STEPS = "workflow.total_steps"
RUN_PARENT_RUN_ID = "workflow.parent_run_id"
RUN_DECLARED_STEPS = "workflow.declared_steps"
"""Names of the steps a workflow declares up front (class API), in order."""
CONTEXT_PREFIX = "workflow.context."
"""Prefix of one attribute per (redacted) context entry: ``workflow.context.server_id``."""
RUN_CONTEXT_JSON = "workflow.context_json"
"""The whole (redacted) context as one JSON object, so nested values survive to the row."""

# --- workflow (run) span, set at end ---------------------------------------------------------
RUN_STATUS = "workflow.status"
RUN_STEPS_COMPLETED = "workflow.steps_completed"
ERROR_TYPE = "error.type"
"""OpenTelemetry's semantic-convention key for the class of error (exception type name)."""

# --- step span -------------------------------------------------------------------------------
STEP_NAME = "workflow.step.name"
STEP_INDEX = "workflow.step.index"
STEP_ATTEMPT = "workflow.step.attempt"
STEP_DESCRIPTION = "workflow.step.description"
STEP_STATUS = "workflow.step.status"
STEP_MESSAGE = "workflow.step.message"
STEP_INPUT = "workflow.step.input"
"""What the step was given, as redacted, bounded JSON text (only where the step opts in)."""
STEP_OUTPUT = "workflow.step.output"
"""What the step returned, as redacted, bounded JSON text (only where the step opts in)."""


# --- log lines recorded on spans ------------------------------------------------------------
LOG_EVENT = "log"
"""Name of the span event a warning or error log line becomes (kept on the step's row)."""
LOG_SEVERITY = "log.severity"
"""The log line's level in lower case: ``warning``, ``error``, ``critical``."""
LOG_MESSAGE = "log.message"
LOG_LOGGER = "log.logger"

# --- collector mode: two attributes the worker adds for flowtel ingest ----------------------
# A *start signal* is a zero-length copy of a workflow span taken when it starts (same trace and
# span id, its start attributes, ``flowtel.signal = "start"``): ingest folds it as the span's
# start, so the run row says ``running`` before the first step ends. A *history-only* copy
# (``flowtel.history_only = true``) is a workflow span the worker's sampler did not sample, sent
# anyway so that history is complete; the collector's trace pipeline drops both kinds, so a
# tracing backend sees exactly what the sampler chose.
SIGNAL = "flowtel.signal"
"""On a start signal: what it signals (``SIGNAL_START``)."""
SIGNAL_START = "start"
HISTORY_ONLY = "flowtel.history_only"
"""``true`` on a workflow span sent for the history only (not sampled for tracing)."""


class RunStatus(enum.StrEnum):
    """Status of one workflow run, as stored in ``workflow_history.status``."""

    PENDING = "pending"
    """The old system's queued state: flowtel never writes it, but reads it in imported rows
    (an active status: never pruned, counted as running)."""
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"
    """Set by the reaper for a run whose process died; a late terminal write replaces it."""


class StepStatus(enum.StrEnum):
    """Status of one step attempt, as stored in ``workflow_step_history.status``."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRYING = "retrying"
    """An attempt that failed and will be retried."""


FINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
"""Statuses a run ends with: only a stronger final status replaces one (see the README's
delivery guarantees for the order)."""
ACTIVE_RUN_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
"""Statuses of a run still under way (never pruned, counted as running)."""
