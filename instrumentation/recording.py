"""Whether anything in this process records workflow history: a warning, once, when nothing does.

``instrumentation`` cannot see the SDK side, so the history span processor (in ``exporters``)
reports itself here: :func:`history_processor_started` when it is created and
:func:`history_processor_stopped` when it shuts down. A workflow that starts while none is
running calls :func:`warn_if_nothing_records`, which logs one warning on the ``flowtel`` logger
(the first time only) saying that nothing is recorded and what fixes it:
``exporters.configure()``, or, where only the ``flowtel-api`` distribution is installed (no
``exporters`` package to configure), installing the full ``flowtel`` distribution first.
Libraries that only instrument themselves stay silent until their user configures flowtel or
not: the warning appears in the application, once.
"""

from __future__ import annotations

import importlib.util
import logging
import threading

__all__ = [
    "history_processor_started",
    "history_processor_stopped",
    "history_processors",
    "warn_if_nothing_records",
]

logger = logging.getLogger("flowtel")

_lock = threading.Lock()
_running = 0
_warned = False


def history_processor_started() -> None:
    """Count one more history processor in this process (called by its constructor)."""
    global _running
    with _lock:
        _running += 1


def history_processor_stopped() -> None:
    """Count one history processor less (called by its ``shutdown``)."""
    global _running
    with _lock:
        _running = max(0, _running - 1)


def history_processors() -> int:
    """How many history processors are running in this process."""
    return _running


def warn_if_nothing_records(workflow_name: str) -> None:
    """Log, once per process, that *workflow_name* runs with no history processor installed."""
    global _warned
    if _running or _warned:
        return
    with _lock:
        if _warned:
            return
        _warned = True
    logger.warning(
        "flowtel: workflow %r runs but no history processor is installed, so no history is "
        "recorded; %s Shown once.",
        workflow_name,
        _how_to_record(),
    )


def _how_to_record() -> str:
    """What to do about it, for an environment with the full flowtel or the API alone."""
    if importlib.util.find_spec("exporters") is None:  # looked up, never imported
        return (
            "this environment has only the flowtel-api distribution (the instrumentation API): "
            "install the full flowtel distribution (pip install . in a clone of flowtel), which "
            "adds the exporters package, then call exporters.configure() at start-up."
        )
    return (
        "call exporters.configure() at start-up (or add exporters.WorkflowHistorySpanProcessor "
        "to your tracer provider)."
    )
