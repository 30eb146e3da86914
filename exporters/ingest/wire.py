"""The two attributes collector mode adds to the span contract, shared by worker and ingest.

Every other name is ``instrumentation.attributes``' (``workflow.*``), unchanged. A *start
signal* is a zero-length copy of a workflow span taken when it starts (same trace and span id,
its start attributes, ``flowtel.signal = "start"``): ingest folds it as the span's start, so the
run row says ``running`` before the first step ends. A *history-only* copy
(``flowtel.history_only = true``) is a workflow span the worker's sampler did not sample, sent
anyway so that history is complete; the collector's trace pipeline drops both kinds, so a
tracing backend sees exactly what the sampler chose.
"""

from __future__ import annotations

__all__ = ["HISTORY_ONLY", "SIGNAL", "SIGNAL_START"]

SIGNAL = "flowtel.signal"
"""On a start signal: what it signals (``"start"``)."""
SIGNAL_START = "start"
HISTORY_ONLY = "flowtel.history_only"
"""``true`` on a workflow span sent for the history only (not sampled for tracing)."""
