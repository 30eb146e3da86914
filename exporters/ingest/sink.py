"""Where ingested spans go: one history processor per service, acknowledged once committed.

Each ``service.name`` gets its own
:class:`~exporters.history.processor.WorkflowHistorySpanProcessor` (rows keep the service that
sent them; at most ``max_services``, the rest share one without a service name, counted).
Ingest trusts no sender. A span that names a run another service or trace owns is kept out
(:mod:`.owners`; counted, logged once per run, reported as a partial success). Room for every
event of a request is reserved in its writer's queue before the first is queued — the request
is refused whole, "busy" (429) when there is no room now and "too large" (413) when there
never can be — so the writer never drops an event of an accepted request. The request's spans
are then handed to ``on_start``/``on_end`` and ``force_flush`` waits until the writer has
committed everything queued before it: only then is the request accepted, so the
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

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, Span
from opentelemetry.trace import format_trace_id
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from exporters.db.engine import make_engine
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.ingest.adapt import IncomingSpan, InvalidSpan, workflow_spans
from exporters.ingest.owners import RunOwners

__all__ = ["Answer", "IngestSink", "Outcome", "SinkStats"]

logger = logging.getLogger("flowtel.ingest")

_ENDED_RUNS_KEPT = 100_000
_NO_HEARTBEAT = 365 * 24 * 3600.0


class Outcome(enum.Enum):
    """How one request ended for the history (every front end maps these to its answers)."""

    COMMITTED = "committed"
    """Every span it carried is committed, or in ingest's spool and replayed since (HTTP 200,
    gRPC OK). Spans that conflicted with their run's owner are not applied and are reported
    as a partial success (:attr:`Answer.rejected`)."""
    BUSY = "busy"
    """Refused before anything was queued: the writer's queue has no room for the whole
    request now (HTTP 429 with ``Retry-After``, gRPC RESOURCE_EXHAUSTED with a retry delay);
    resend later."""
    TOO_LARGE = "too large"
    """Refused before anything was queued: the request holds more events than the writer's
    queue could ever take (HTTP 413, gRPC INVALID_ARGUMENT); split it (a smaller batch)."""
    INVALID = "invalid"
    """Refused before anything was queued: a span carries a value the history refuses; the
    message names it (HTTP 400, gRPC INVALID_ARGUMENT); resending it cannot succeed."""
    NOT_COMMITTED = "not committed"
    """Queued, but not committed in time, or a writer is not running (HTTP 503, gRPC
    UNAVAILABLE); resend later, harmlessly."""


@dataclass(frozen=True)
class Answer:
    """The outcome of one request and what to tell its sender.

    Attributes:
        outcome: see :class:`Outcome`.
        message: why, for the sender (empty when committed without conflicts).
        rejected: spans not applied because they conflict with their run's owner (OTLP's
            ``partial_success.rejected_spans``).
    """

    outcome: Outcome
    message: str = ""
    rejected: int = 0


@dataclass
class SinkStats:
    """Counters of the ingest service (they only grow)."""

    requests: int = 0
    spans_received: int = 0
    workflow_spans: int = 0
    committed_requests: int = 0
    busy_requests: int = 0
    too_large_requests: int = 0
    invalid_requests: int = 0
    uncommitted_requests: int = 0
    late_signals_dropped: int = 0
    services_over_limit: int = 0
    run_conflicts: int = 0
    """Spans not applied: they name a run that another service or trace owns."""


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
        self.capacity = int(self._options["max_queue_size"])
        """Events one writer's queue takes at most: a larger request can never be accepted."""
        self._engine_factory = engine_factory
        self._processors: dict[str | None, WorkflowHistorySpanProcessor] = {}
        self._reserved: dict[str | None, int] = {}
        self._owners = RunOwners(database_url, engine_factory)
        self._conflicts_logged: OrderedDict[str, None] = OrderedDict()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    def processor(self, service: str | None) -> WorkflowHistorySpanProcessor:
        """The processor of *service* (created on first use)."""
        return self._processors[self._key(service)]

    def _key(self, service: str | None) -> str | None:
        """The processor (and the ``service_name`` of the rows) *service*'s spans go to."""
        with self._lock:
            if service in self._processors:
                return service
            if service is not None and len(self._processors) >= self.max_services:
                self.stats.services_over_limit += 1  # under the lock
                if self.stats.services_over_limit == 1:
                    logger.warning(
                        "flowtel ingest: more than %d services; the rows of the others are "
                        "stored without a service name",
                        self.max_services,
                    )
                service = None
            self._processor_locked(service)
            return service

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

    def problems(self) -> list[str]:
        """Why the service cannot commit what it is sent (empty while it can): a writer
        whose thread is not running (``/health`` answers 503 with these)."""
        with self._lock:
            processors = dict(self._processors)
            closed = self._closed
        if closed:
            return ["flowtel ingest is shutting down"]
        return [
            f"the history writer of service {service!r} is not running "
            f"(state {processor.writer.state.value}); restart flowtel ingest and see its log"
            for service, processor in processors.items()
            if not processor.writer.alive
        ]

    def export(self, request: ExportTraceServiceRequest) -> Answer:
        """Validate, queue and commit the spans of *request* (the front ends call this)."""
        try:
            spans = list(workflow_spans(request))
        except InvalidSpan as exc:
            self._count(requests=1, invalid_requests=1)
            return Answer(Outcome.INVALID, str(exc))
        received = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
        outcome, rejected = self._submit(spans, received)
        if outcome is Outcome.COMMITTED and rejected:
            message = (
                f"{rejected} span(s) not applied: their run belongs to another service or "
                "trace (a run id is unique per execution; send a new one)"
            )
            return Answer(outcome, message, rejected)
        return Answer(outcome, _MESSAGES[outcome])

    def submit(self, spans: list[IncomingSpan], received: int) -> Outcome:
        """Queue *spans* and wait for their commit (see :class:`Outcome`).

        Room for every event of the request is reserved in its writer's queue before the
        first is queued, so a request is either refused whole (busy, too large) or queued
        whole; a span that names a run another service or trace owns is left out (counted in
        ``run_conflicts``; :meth:`export` also tells the sender how many).
        """
        return self._submit(spans, received)[0]

    def _submit(self, spans: list[IncomingSpan], received: int) -> tuple[Outcome, int]:
        """:meth:`submit`, and how many spans conflicted with their run's owner."""
        self._count(requests=1, spans_received=received, workflow_spans=len(spans))
        if not spans:
            self._count(committed_requests=1)
            return Outcome.COMMITTED, 0
        if self._closed:
            self._count(busy_requests=1)
            return Outcome.BUSY, 0
        keys = {service: self._key(service) for service in {s.service for s in spans}}
        routed = [(keys[s.service], s) for s in spans]
        try:
            owned = self._owned(routed)
        except (SQLAlchemyError, TimeoutError) as exc:
            logger.warning("flowtel ingest could not read run owners: %s", type(exc).__name__)
            self._count(uncommitted_requests=1)
            return Outcome.NOT_COMMITTED, 0
        rejected = len(routed) - len(owned)
        return self._queue_and_flush(owned), rejected

    def _queue_and_flush(self, routed: list[tuple[str | None, IncomingSpan]]) -> Outcome:
        need: dict[str | None, int] = {}
        for key, incoming in routed:
            events = 2 if not incoming.start and incoming.is_run else 1  # a run end: 2
            need[key] = need.get(key, 0) + events
        if not need:
            self._count(committed_requests=1)
            return Outcome.COMMITTED
        for key in need:
            need[key] += 1  # the flush marker
        if max(need.values()) > self.capacity:
            self._count(too_large_requests=1)
            return Outcome.TOO_LARGE
        if not self._reserve(need):
            self._count(busy_requests=1)
            return Outcome.BUSY
        try:
            used = {key: self._processors[key] for key in need}
            dropped_before = {key: _dropped(p) for key, p in used.items()}
            self._queue(routed, used)
        finally:
            self._release(need)
        timeout_ms = int(self.commit_timeout * 1000)
        ok = all([p.force_flush(timeout_ms) for p in used.values()])
        lost = sum(_dropped(p) - dropped_before[key] for key, p in used.items())
        if ok and not lost:
            self._count(committed_requests=1)
            return Outcome.COMMITTED
        if lost:  # never expected with room reserved: say so, and have the sender resend
            logger.error("flowtel ingest: %d event(s) of a request were dropped; retry", lost)
        self._count(uncommitted_requests=1)
        return Outcome.NOT_COMMITTED

    def _owned(
        self, routed: list[tuple[str | None, IncomingSpan]]
    ) -> list[tuple[str | None, IncomingSpan]]:
        """*routed* without the spans whose run another (service, trace) owns."""
        traces: dict[int, str] = {}  # a request's spans share few traces: format each once
        claims = [
            (s.run_id, (key, traces.get(s.trace_id) or _trace_hex(traces, s.trace_id)))
            for key, s in routed
        ]
        conflicts = self._owners.conflicts(claims, self.commit_timeout)
        if not any(conflicts):
            return routed
        kept: list[tuple[str | None, IncomingSpan]] = []
        for (key, incoming), (run_id, (service, trace_id)), conflict in zip(
            routed, claims, conflicts, strict=True
        ):
            if not conflict:
                kept.append((key, incoming))
                continue
            self._count(run_conflicts=1)
            if self._first_conflict(run_id):
                logger.warning(
                    "flowtel ingest kept a span out of run %s: the run belongs to another "
                    "service or trace than this span's (service %r, trace %s); a run id is "
                    "unique per execution (further conflicts of this run are only counted)",
                    run_id,
                    service,
                    trace_id,
                )
        return kept

    def _first_conflict(self, run_id: str) -> bool:
        with self._lock:
            if run_id in self._conflicts_logged:
                return False
            self._conflicts_logged[run_id] = None
            while len(self._conflicts_logged) > _ENDED_RUNS_KEPT:
                self._conflicts_logged.popitem(last=False)
            return True

    def _reserve(self, need: dict[str | None, int]) -> bool:
        """Reserve *need* events in each writer's queue, all or none."""
        with self._lock:
            for key, events in need.items():
                queued = _depth(self._processors[key]) + self._reserved.get(key, 0)
                if queued > self.max_queued or queued + events > self.capacity:
                    return False
            for key, events in need.items():
                self._reserved[key] = self._reserved.get(key, 0) + events
            return True

    def _release(self, need: dict[str | None, int]) -> None:
        with self._lock:
            for key, events in need.items():
                self._reserved[key] -= events

    def _queue(
        self,
        routed: list[tuple[str | None, IncomingSpan]],
        used: dict[str | None, WorkflowHistorySpanProcessor],
    ) -> None:
        ended_here = {s.run_id for _, s in routed if not s.start and s.is_run}
        # A run's span that ends in this request is folded as a start first, so that its steps
        # in the same request land in its state (metadata.steps, current_step), as in-process.
        # The processors' on_start/on_end capture the wire spans exactly as they capture SDK
        # spans (see .wirespan).
        for key, incoming in routed:
            if not incoming.start and incoming.is_run:
                used[key].on_start(cast(Span, incoming.span))
        late = 0
        for key, incoming in routed:
            processor = used[key]
            if incoming.start:
                if incoming.run_id in ended_here or self._was_ended(incoming.run_id):
                    late += 1
                    continue
                processor.on_start(cast(Span, incoming.span))
            else:
                processor.on_end(cast(ReadableSpan, incoming.span))
                if incoming.is_run:
                    self._remember_end(incoming.run_id)
        if late:
            self._count(late_signals_dropped=late)

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
        ok = all([p.shutdown(int(timeout * 1000)) for p in processors])
        self._owners.close()
        return ok


_MESSAGES = {
    Outcome.COMMITTED: "",
    Outcome.BUSY: "too much is queued; retry later",
    Outcome.TOO_LARGE: "the request holds more spans than ingest's queue takes: send smaller "
    "batches (the collector's batch processor: send_batch_max_size)",
    Outcome.INVALID: "invalid span",
    Outcome.NOT_COMMITTED: "the history database did not commit in time; retry later",
}


def _depth(processor: WorkflowHistorySpanProcessor) -> int:
    return len(processor.writer.queue)


def _trace_hex(formatted: dict[int, str], trace_id: int) -> str:
    text = formatted[trace_id] = format_trace_id(trace_id)
    return text


def _dropped(processor: WorkflowHistorySpanProcessor) -> int:
    return processor.writer.events_dropped

