"""``configure()``: one call that wires flowtel into a process.

It opens the history database, builds (or extends) the tracer provider with the history
processor first and, when OTLP export is on, a ``BatchSpanProcessor`` second, wraps the sampler
so that sampling never thins the audit trail, and registers shutdown at interpreter exit. The
returned :class:`Flowtel` handle flushes and shuts everything down with bounded waits.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Sampler
from sqlalchemy.engine import URL, Engine

from instrumentation import __version__

from .database import display_url, make_engine, resolve_database_url
from .otlp import make_span_exporter, otlp_requested
from .processor import WorkflowHistorySpanProcessor
from .sampling import AuditSampler, sampler_from_env

__all__ = ["Flowtel", "configure"]

logger = logging.getLogger("flowtel")


class Flowtel:
    """What :func:`configure` set up; flush or shut it down through this handle."""

    def __init__(
        self,
        engine: Engine,
        tracer_provider: TracerProvider,
        processor: WorkflowHistorySpanProcessor,
        span_export: BatchSpanProcessor | None,
        owns_provider: bool,
    ) -> None:
        self.engine = engine
        self.tracer_provider = tracer_provider
        self.processor = processor
        self.span_export = span_export
        self._owns_provider = owns_provider
        self._closed = False

    @property
    def database_url(self) -> URL:
        """The history database's URL (display it with ``display_url``)."""
        return self.engine.url

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write all recorded history (and export queued spans); False on timeout or error."""
        ok = self.processor.force_flush(timeout_millis)
        if self.span_export is not None:
            self.span_export.force_flush(timeout_millis)
        return ok

    def shutdown(self, timeout_millis: int = 30_000) -> bool:
        """Flush and stop everything flowtel started; idempotent."""
        if self._closed:
            return True
        self._closed = True
        ok = self.processor.shutdown(timeout_millis)
        if self.span_export is not None:
            self.span_export.shutdown()  # type: ignore[no-untyped-call]
        if self._owns_provider:
            self.tracer_provider.shutdown()
        return ok

    def __repr__(self) -> str:
        return f"<Flowtel database={display_url(self.engine.url)!r}>"


def _resource(service_name: str | None) -> Resource:
    attributes: dict[str, Any] = {
        "service.version": __version__,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }
    if service_name:
        attributes["service.name"] = service_name
    return Resource.create(attributes)


def configure(
    *,
    database_url: str | URL | None = None,
    service_name: str | None = None,
    tracer_provider: TracerProvider | None = None,
    sampler: Sampler | None = None,
    otlp: bool | None = None,
    **processor_options: Any,
) -> Flowtel:
    """Record workflow history (and export traces) from this process.

    Args:
        database_url: the history database (default: ``FLOWTEL_DATABASE_URL``, else
            ``sqlite:///flowtel.db`` in the working directory).
        service_name: the ``service.name`` resource attribute and the rows' ``service_name``
            (default: ``OTEL_SERVICE_NAME``).
        tracer_provider: add flowtel's processors to this provider instead of creating one.
        sampler: the trace sampler (default: ``OTEL_TRACES_SAMPLER``); wrapped so workflow
            spans are always recorded. Ignored when *tracer_provider* is given.
        otlp: export traces over OTLP (default: on when an ``OTEL_EXPORTER_OTLP_*ENDPOINT``
            variable is set).
        **processor_options: passed to :class:`WorkflowHistorySpanProcessor`.

    Returns:
        The :class:`Flowtel` handle; its ``shutdown`` also runs at interpreter exit.
    """
    url = resolve_database_url(database_url)
    engine = make_engine(url)
    resource = _resource(service_name)
    service = service_name or str(resource.attributes.get("service.name") or "") or None
    processor = WorkflowHistorySpanProcessor(engine, service_name=service, **processor_options)
    owns_provider = tracer_provider is None
    if tracer_provider is None:
        tracer_provider = _global_provider(resource, sampler)
    tracer_provider.add_span_processor(processor)
    span_export = None
    if otlp_requested(otlp):
        span_export = BatchSpanProcessor(make_span_exporter())
        tracer_provider.add_span_processor(span_export)
    handle = Flowtel(engine, tracer_provider, processor, span_export, owns_provider)
    atexit.register(handle.shutdown)
    logger.debug("flowtel records workflow history to %s", display_url(url))
    return handle


def _global_provider(resource: Resource, sampler: Sampler | None) -> TracerProvider:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current  # already installed (e.g. configure() called twice): extend it
    provider = TracerProvider(
        resource=resource,
        sampler=AuditSampler(sampler or sampler_from_env()),
        shutdown_on_exit=False,
    )
    trace.set_tracer_provider(provider)
    return provider
