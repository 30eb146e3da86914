"""flowtel's consumer side: workflow spans become SQL history rows and OTLP traces.

:func:`configure` wires everything into a process. The pieces it uses are public too:
:class:`WorkflowHistorySpanProcessor` (spans → queued events → batched upserts on a writer
thread), the schema (:data:`workflow_history`, :data:`workflow_step_history`), the
:class:`AuditSampler` that keeps every run in SQL whatever the trace sampling, the id generator
and span limits for an application that builds its own tracer provider, :func:`make_engine`
for the history database, the read side (:class:`HistoryStore`), maintenance (:func:`reap`,
:func:`prune`, :func:`replay_spool`, :func:`check_schema`, :mod:`migrations`) and the errors,
all under :class:`FlowtelError`. Everything documented is importable from here; the
subpackages (``history``, ``db``, ``spool``, ``query``, ``ops``, ``telemetry``, ``cli``) are
the house's rooms, not its address.
"""

from __future__ import annotations

from exporters.configure import Flowtel, configure
from exporters.db import migrations
from exporters.db.check import SchemaReport, check_schema, prepare_schema
from exporters.db.engine import DEFAULT_DATABASE_URL, display_url, make_engine
from exporters.db.schema import create_schema, workflow_history, workflow_step_history
from exporters.errors import (
    AlreadyConfiguredError,
    AmbiguousRunError,
    DatabaseFileError,
    DatabaseURLError,
    FlowtelError,
    RunNotFoundError,
    SchemaMismatchError,
    SpoolDirectoryError,
    UnsupportedDatabaseError,
)
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.ops.reaper import ReapedRun, reap
from exporters.ops.retention import PruneResult, prune
from exporters.query.store import HistoryStore
from exporters.spool.replay import replay_spool
from exporters.telemetry.logs import add_trace_context, install_logging_bridge, record_span_event
from exporters.telemetry.provider import PrivateRandomIdGenerator, span_limits
from exporters.telemetry.sampling import AuditSampler
from exporters.telemetry.signals import install_sigterm_handler
from instrumentation import __version__

__all__ = [
    "DEFAULT_DATABASE_URL",
    "AlreadyConfiguredError",
    "AmbiguousRunError",
    "AuditSampler",
    "DatabaseFileError",
    "DatabaseURLError",
    "Flowtel",
    "FlowtelError",
    "HistoryStore",
    "PrivateRandomIdGenerator",
    "PruneResult",
    "ReapedRun",
    "RunNotFoundError",
    "SchemaMismatchError",
    "SchemaReport",
    "SpoolDirectoryError",
    "UnsupportedDatabaseError",
    "WorkflowHistorySpanProcessor",
    "__version__",
    "add_trace_context",
    "check_schema",
    "configure",
    "create_schema",
    "display_url",
    "install_logging_bridge",
    "install_sigterm_handler",
    "make_engine",
    "migrations",
    "prepare_schema",
    "prune",
    "reap",
    "record_span_event",
    "replay_spool",
    "span_limits",
    "workflow_history",
    "workflow_step_history",
]
