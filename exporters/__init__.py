"""flowtel's consumer side: workflow spans become SQL history rows and OTLP traces.

:func:`configure` wires everything into a process. The pieces it uses are public too:
:class:`WorkflowHistorySpanProcessor` (spans → queued events → batched upserts on a writer
thread), the schema (:data:`workflow_history`, :data:`workflow_step_history`), the
:class:`AuditSampler` that keeps every run in SQL whatever the trace sampling, and
:func:`make_engine` for the history database.
"""

from __future__ import annotations

from .database import DEFAULT_DATABASE_URL, DatabaseURLError, display_url, make_engine
from .processor import WorkflowHistorySpanProcessor
from .reaper import reap
from .replay import replay_spool
from .sampling import AuditSampler
from .schema import create_schema, workflow_history, workflow_step_history
from .setup import Flowtel, configure
from .signals import install_sigterm_handler

__all__ = [
    "DEFAULT_DATABASE_URL",
    "AuditSampler",
    "DatabaseURLError",
    "Flowtel",
    "WorkflowHistorySpanProcessor",
    "configure",
    "create_schema",
    "display_url",
    "install_sigterm_handler",
    "make_engine",
    "reap",
    "replay_spool",
    "workflow_history",
    "workflow_step_history",
]
