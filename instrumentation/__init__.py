"""flowtel's producer side: wrap workflows and steps in OpenTelemetry spans.

Three ways to instrument, all producing the same spans: the context managers
(:func:`workflow_run`, ``run.step``), the decorators (:func:`workflow`, :func:`step`) and the
class-based engine (:class:`Workflow`, :class:`Step`). This package depends on the
OpenTelemetry API and the standard library only; turning spans into history rows is the job of
the ``exporters`` package.
"""

from __future__ import annotations

from ._version import __version__
from .attributes import RunStatus, StepStatus
from .decorators import step, workflow
from .engine import (
    ResultStatus,
    Step,
    StepContext,
    StepExecutionResult,
    StepResult,
    Workflow,
    WorkflowResult,
)
from .errors import FlowtelError
from .limits import Limits, get_limits, set_limits
from .redaction import (
    REDACTED,
    Redactor,
    get_redactor,
    redact,
    redaction_processor,
    set_redactor,
)
from .runs import RunScope, WorkflowRun, current_run, workflow_run
from .steps import StepRun, StepScope

__all__ = [
    "REDACTED",
    "FlowtelError",
    "Limits",
    "Redactor",
    "ResultStatus",
    "RunScope",
    "RunStatus",
    "Step",
    "StepContext",
    "StepExecutionResult",
    "StepResult",
    "StepRun",
    "StepScope",
    "StepStatus",
    "Workflow",
    "WorkflowResult",
    "WorkflowRun",
    "__version__",
    "current_run",
    "get_limits",
    "get_redactor",
    "redact",
    "redaction_processor",
    "set_limits",
    "set_redactor",
    "step",
    "workflow",
    "workflow_run",
]
