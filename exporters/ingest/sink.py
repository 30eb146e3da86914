"""Where ingested spans go: one history processor per service, acknowledged once committed.

Each ``service.name`` gets its own
:class:`~exporters.history.processor.WorkflowHistorySpanProcessor` (rows keep the service that
sent them; at most ``max_services``, the rest share one without a service name, counted). A
request's spans are handed to ``on_start``/``on_end`` and then ``force_flush`` waits until the
writer has committed everything queued before it: only then is the request accepted, so the
collector's retries give at-least-once delivery and the idempotent, order-guarded upserts make
the tables exactly-once. When the database does not take the rows in time the answer is
"retry" (the rows may meanwhile sit in ingest's spool: replayed later, and upserted once more
harmlessly when the collector resends). Heartbeats are off: a run's liveness is its worker's,
which ingest cannot see, so ``updated_at`` moves with each step's end and ``flowtel reap``
judges a silent worker by that. A start signal that arrives after its run's end (the collector
does not keep order across batches) is dropped, so it never reopens the run's state in memory.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

from opentelemetry.sdk.trace import Span
from sqlalchemy.engine import URL

from exporters.db.engine import make_engine
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.ingest.adapt import IncomingSpan
from instrumentation import attributes as attr

__all__ = ["IngestSink", "Outcome", "SinkStats"]

logger = logging.getLogger("flowtel.ingest")

_ENDED_RUNS_KEPT = 100_000
_NO_HEARTBEAT = 365 * 24 * 3600.0


class Outcome(enum.Enum):
    """How one request ended for the history."""

    COMMITTED = "committed"
    """Every row is committed (200)."""
    BUSY = "busy"
    """Refused before anything was queued: too much is queued already (429/503, retry)."""
    NOT_COMMITTED = "not committed"
    """Queued, but not committed in time (503, retry; resending is harmless)."""


@dataclass
class SinkStats:
    """Counters of the ingest service (they only grow)."""

    requests: int = 0
    spans_received: int = 0
    workflow_spans: int = 0
    committed_requests: int = 0
    busy_requests: int = 0
    uncommitted_requests: int = 0
    late_signals_dropped: int = 0
    services_over_limit: int = 0


class IngestSink:
    """Feeds decoded workflow spans to history processors and waits for their commit.

    Args:
        database_url: the history database.
        commit_timeout: seconds a request waits for its rows to be committed.
        max_queued: events queued in one processor past which requests are refused (busy).
        max_services: processors (services) kept at most.
        processor_options: passed to each ``WorkflowHistorySpanProcessor``.
        engine_factory: makes each processor's engine (default ``make_engine``).
    """

    def __init__(
        self,
        database_url: str | URL,
        *,
        commit_timeout: float = 10.0,
        max_queued: int = 50_000,
        max_services: int = 64,
        processor_options: dict[str, Any] | None = None,
        engine_factory: Callable[[str | URL], Any] = make_engine,
    ) -> None:
        self.database_url = database_url
        self.commit_timeout = commit_timeout
        self.max_queued = max_queued
        self.max_services = max_services
        self.stats = SinkStats()
        self._options: dict[str, Any] = {
            "heartbeat_interval": _NO_HEARTBEAT,
            "max_queue_size": max(max_queued * 2, 1000),
            **(processor_options or {}),
        }
        self._engine_factory = engine_factory
        self._processors: dict[str | None, WorkflowHistorySpanProcessor] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def processor(self, service: str | None) -> WorkflowHistorySpanProcessor:
        """The processor of *service* (created on first use)."""
        with self._lock:
            found = self._processors.get(service)
            if found is not None:
                return found
            if service is not None and len(self._processors) >= self.max_services:
                self.stats.services_over_limit += 1  # under the lock
                if self.stats.services_over_limit == 1:
                    logger.warning(
                        "flowtel ingest: more than %d services; the rows of the others are "
                        "stored without a service name",
                        self.max_services,
                    )
                return self._processor_locked(None)
            return self._processor_locked(service)

    def _processor_locked(self, service: str | None) -> WorkflowHistorySpanProcessor:
        found = self._processors.get(service)
        if found is None:
            engine = self._engine_factory(self.database_url)
            found = WorkflowHistorySpanProcessor(engine, service_name=service, **self._options)
            self._processors[service] = found
        return found

    def busy(self) -> bool:
        """Whether some processor holds more than ``max_queued`` events (refuse new requests)."""
        with self._lock:
            processors = list(self._processors.values())
        return any(int(p.stats["queue_depth"] or 0) > self.max_queued for p in processors)

    def submit(self, spans: list[IncomingSpan], received: int) -> Outcome:
        """Queue *spans* and wait for their commit (see :class:`Outcome`)."""
        self._count(requests=1, spans_received=received, workflow_spans=len(spans))
        if not spans:
            self._count(committed_requests=1)
            return Outcome.COMMITTED
        if self._closed or self.busy():
            self._count(busy_requests=1)
            return Outcome.BUSY
        ended_here = {str(_run_id(s)) for s in spans if not s.start and _is_run(s)}
        used: dict[str | None, WorkflowHistorySpanProcessor] = {}
        # A run's span that ends in this request is folded as a start first, so that its steps
        # in the same request land in its state (metadata.steps, current_step), as in-process.
        runs_first = [
            IncomingSpan(s.service, True, s.span) for s in spans if not s.start and _is_run(s)
        ]
        for incoming in runs_first:
            processor = used.get(incoming.service)
            if processor is None:
                processor = used[incoming.service] = self.processor(incoming.service)
            processor.on_start(cast(Span, incoming.span))
        for incoming in spans:
            processor = used.get(incoming.service)
            if processor is None:
                processor = used[incoming.service] = self.processor(incoming.service)
            if incoming.start:
                run_id = str(_run_id(incoming))
                if run_id in ended_here or self._was_ended(run_id):
                    self._count(late_signals_dropped=1)
                    continue
                processor.on_start(cast(Span, incoming.span))
            else:
                processor.on_end(incoming.span)
                if _is_run(incoming):
                    self._remember_end(str(_run_id(incoming)))
        timeout_ms = int(self.commit_timeout * 1000)
        ok = all([p.force_flush(timeout_ms) for p in used.values()])
        if ok:
            self._count(committed_requests=1)
            return Outcome.COMMITTED
        self._count(uncommitted_requests=1)
        return Outcome.NOT_COMMITTED

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, amount in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + amount)

    def _was_ended(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._ended

    def _remember_end(self, run_id: str) -> None:
        with self._lock:
            self._ended[run_id] = None
            self._ended.move_to_end(run_id)
            while len(self._ended) > _ENDED_RUNS_KEPT:
                self._ended.popitem(last=False)

    def snapshot(self) -> dict[str, Any]:
        """The service's counters and each processor's (for ``/stats`` and logs)."""
        with self._lock:
            processors = dict(self._processors)
            data: dict[str, Any] = asdict(self.stats)
        data["processors"] = {str(k): dict(p.stats) for k, p in processors.items()}
        return data

    def close(self, timeout: float = 10.0) -> bool:
        """Flush and stop every processor (rows not committed in time are spooled)."""
        self._closed = True
        with self._lock:
            processors = list(self._processors.values())
        return all([p.shutdown(int(timeout * 1000)) for p in processors])


def _run_id(incoming: IncomingSpan) -> Any:
    return (incoming.span.attributes or {}).get(attr.RUN_ID)


def _is_run(incoming: IncomingSpan) -> bool:
    """A workflow (run) span, not a step: it has no step name."""
    return attr.STEP_NAME not in (incoming.span.attributes or {})
