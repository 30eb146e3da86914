"""``configure()``: one call that wires flowtel into a process.

It opens the history database (checking its tables for at most a second, on a thread of its
own, so a silent database server cannot hang the application), builds (or extends) the tracer
provider with the history processor first, the metrics processor second and, when OTLP export
is on, a ``BatchSpanProcessor`` last; wraps the sampler so that sampling never thins the audit
trail; sets up metrics over OTLP and structlog/stdlib logging with trace ids; and registers a
bounded shutdown at interpreter exit. The returned :class:`Flowtel` handle flushes and shuts
everything down within the timeout it is given, however unreachable the collector is.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from sqlalchemy.engine import URL, Engine

from exporters.db.check import SchemaMismatchError, check_schema
from exporters.db.engine import display_url, make_engine, resolve_database_url
from exporters.errors import AlreadyConfiguredError
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.ops.policy import RetentionPolicy, policy_from_env
from exporters.ops.schedule import RetentionRunner
from exporters.telemetry.export import CountedSpanExport
from exporters.telemetry.forward import HistoryForwarder
from exporters.telemetry.logs import configure_logging
from exporters.telemetry.metrics import WorkflowMetricsSpanProcessor, install_metrics
from exporters.telemetry.otlp import (
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    OTLPSettings,
    abort_exporter,
    call_all_with_timeout,
    call_with_timeout,
    make_resource,
    otlp_requested,
    shutdown_timeout_from_env,
)
from exporters.telemetry.provider import global_provider
from exporters.telemetry.sampling import AuditSampler, sampler_from_env
from exporters.telemetry.step_io import WithoutStepIO, export_step_io_from_env

__all__ = ["Flowtel", "configure"]

logger = logging.getLogger("flowtel")

_configure_lock = threading.Lock()
_active: tuple[Flowtel, dict[str, Any]] | None = None
"""The live handle ``configure()`` returned, with the arguments it was given."""


COLLECTOR_URL = URL.create("flowtel-collector")
"""``Flowtel.database_url`` in collector mode: no database in this process."""


class Flowtel:
    """What :func:`configure` set up; flush or shut it down through this handle."""

    def __init__(
        self,
        engine: Engine | None,
        tracer_provider: TracerProvider,
        processor: WorkflowHistorySpanProcessor | HistoryForwarder,
        span_export: CountedSpanExport | None,
        owns_provider: bool,
        *,
        span_exporter: SpanExporter | None = None,
        metrics_processor: WorkflowMetricsSpanProcessor | None = None,
        meter_provider: MeterProvider | None = None,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
        retention: RetentionRunner | None = None,
    ) -> None:
        self.engine = engine
        self.retention = retention
        """The background retention pass (``configure(retention=...)``), if any."""
        self.tracer_provider = tracer_provider
        self.processor = processor
        self.span_export = span_export
        self.span_exporter = span_exporter
        self.metrics_processor = metrics_processor
        self.meter_provider = meter_provider
        """The meter provider flowtel created (``None`` when it uses one it was given)."""
        self.shutdown_timeout = shutdown_timeout
        self._owns_provider = owns_provider
        self._closed = False

    @property
    def trace_export(self) -> dict[str, Any]:
        """How the OTLP trace export went, apart from the history rows.

        ``enabled`` (OTLP export is on), ``spans_exported`` and ``spans_failed`` (the
        exporter's answers so far), ``spans_dropped`` (evicted from the export's full queue,
        ended after shutdown or left queued when it gave up) and ``ok`` (``None`` when off,
        else no span failed or was dropped).
        """
        counts = self.span_export.counts() if self.span_export is not None else {}
        exported = counts.get("spans_exported", 0)
        failed = counts.get("spans_failed", 0)
        dropped = counts.get("spans_dropped", 0)
        return {
            "enabled": self.span_export is not None,
            "ok": None if self.span_export is None else failed == dropped == 0,
            "spans_exported": exported,
            "spans_failed": failed,
            "spans_dropped": dropped,
        }

    @property
    def closed(self) -> bool:
        """Whether :meth:`shutdown` was called."""
        return self._closed

    @property
    def database_url(self) -> URL:
        """The history database's URL (display it with ``display_url``); in collector mode,
        where ``flowtel ingest`` writes the history, :data:`COLLECTOR_URL`."""
        return COLLECTOR_URL if self.engine is None else self.engine.url

    def _budget(self, timeout_millis: int | None) -> float:
        return (self.shutdown_timeout * 1000 if timeout_millis is None else timeout_millis) / 1000

    def force_flush(self, timeout_millis: int | None = None) -> bool:
        """Write all recorded history and export queued telemetry, within the timeout.

        Args:
            timeout_millis: the whole call's bound (default: the handle's ``shutdown_timeout``).

        Returns:
            False if the history was not all committed or an export did not finish in time.
        """
        deadline = time.monotonic() + self._budget(timeout_millis)
        ok = self.processor.force_flush(int(self._budget(timeout_millis) * 1000))
        if self.metrics_processor is not None:
            self.metrics_processor.force_flush()  # queued spans into the instruments first
        calls: list[tuple[Callable[[], Any], str]] = []
        if self.span_export is not None:
            calls.append((self.span_export.force_flush, "span export flush"))
        if self.meter_provider is not None:
            calls.append((self.meter_provider.force_flush, "metrics flush"))
        return all(call_all_with_timeout(calls, deadline).values()) and ok

    def shutdown(self, timeout_millis: int | None = None) -> bool:
        """Flush and stop everything flowtel started, within *timeout_millis*; idempotent.

        History is written first; span and metric exports then share what is left of the
        budget, and exports still stuck at the deadline (a collector that is down or silent)
        are abandoned, so the call returns in time even though the SDK's own shutdown can block
        for 30 s.

        Args:
            timeout_millis: the whole call's bound (default: the handle's ``shutdown_timeout``).

        Returns:
            False if some history or telemetry could not be delivered in time.
        """
        if self._closed:
            return True
        self._closed = True
        budget = self._budget(timeout_millis)
        deadline = time.monotonic() + budget
        if self.retention is not None:  # between two batches; a hung one is left behind
            self.retention.stop(min(1.0, budget / 4))
        ok = self.processor.shutdown(int(max(deadline - time.monotonic(), 0.0) * 1000))
        if self.metrics_processor is not None:
            self.metrics_processor.shutdown()  # queued spans into the instruments first
        calls: list[tuple[Callable[[], Any], str]] = []
        if self.span_export is not None:
            calls.append((self.span_export.shutdown, "span export shutdown"))
        if self.meter_provider is not None:
            provider = self.meter_provider
            remaining_ms = max(deadline - time.monotonic(), 0.0) * 1000
            calls.append((lambda: provider.shutdown(remaining_ms), "metrics shutdown"))
        done = call_all_with_timeout(calls, deadline)
        if not done.get("span export shutdown", True) and self.span_exporter is not None:
            abort_exporter(self.span_exporter)
        if self._owns_provider:
            remaining = max(deadline - time.monotonic(), 0.05)
            call_with_timeout(self.tracer_provider.shutdown, remaining, "tracer provider shutdown")
        return ok and all(done.values())

    def __repr__(self) -> str:
        if self.engine is None:
            return "<Flowtel history=collector>"
        return f"<Flowtel database={display_url(self.engine.url)!r}>"


STARTUP_CHECK_S = 1.0
"""Seconds ``configure()`` waits for the schema check before leaving it to the writer."""


def _check_schema_briefly(engine: Engine, wait: float = STARTUP_CHECK_S) -> None:
    """Raise :class:`SchemaMismatchError` if the database answers within *wait* seconds that
    its tables cannot take flowtel's rows; otherwise return (never blocks longer).

    The check only reads, on a daemon thread: a database that is down or silent leaves it to
    the writer, which creates the tables, replays earlier processes' spool files (oldest
    first) and reports a mismatch at ERROR from its own thread, where the driver's timeouts
    bound every wait.
    """
    found: list[BaseException] = []

    def check() -> None:
        try:
            report = check_schema(engine)
            if not report.only_tables_missing:  # tables missing: the writer creates them
                found.append(SchemaMismatchError(report))
        except Exception as exc:  # unreachable for now: the writer retries, then spools
            logger.debug("flowtel's start-up schema check failed: %s", type(exc).__name__)

    thread = threading.Thread(target=check, name="flowtel-schema-check", daemon=True)
    thread.start()
    thread.join(wait)
    if found:
        raise found[0]


def _reachable(provider: TracerProvider) -> None:
    """Make workflows reach *provider*: install it globally if no SDK provider is, else say how."""
    current = trace.get_tracer_provider()
    if current is provider:
        return
    if not isinstance(current, TracerProvider):
        trace.set_tracer_provider(provider)
        return
    logger.warning(
        "flowtel: the tracer provider given to configure() is not the global one; workflows "
        "are recorded only when given it: workflow_run(..., tracer_provider=handle."
        "tracer_provider), or a workflow class's tracer_provider attribute"
    )


def configure(
    *,
    database_url: str | URL | None = None,
    service_name: str | None = None,
    service_version: str | None = None,
    resource_attributes: Mapping[str, Any] | None = None,
    tracer_provider: TracerProvider | None = None,
    sampler: Sampler | None = None,
    otlp: bool | None = None,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    otlp_timeout: float | None = None,
    metrics: bool | None = None,
    meter_provider: otel_metrics.MeterProvider | None = None,
    metrics_interval: float | None = None,
    logs: bool | str = True,
    log_level: int | str = "INFO",
    shutdown_timeout: float | None = None,
    history: str | None = None,
    retention: str | RetentionPolicy | None = None,
    **processor_options: Any,
) -> Flowtel:
    """Record workflow history, and export traces and metrics, from this process.

    Once per process: a second call with the same arguments returns the live handle; one with
    other arguments raises :class:`AlreadyConfiguredError` until that handle is shut down.
    flowtel shuts down only what it created: a tracer provider the application installed or
    passed keeps running after :meth:`Flowtel.shutdown`.

    Args:
        database_url: the history database (default: ``FLOWTEL_DATABASE_URL``, else
            ``sqlite:///flowtel.db`` in the working directory).
        service_name: ``service.name`` and the rows' ``service_name`` (default:
            ``OTEL_SERVICE_NAME``).
        service_version: ``service.version`` (default: from ``OTEL_RESOURCE_ATTRIBUTES``, else
            flowtel's version).
        resource_attributes: more resource attributes (override the environment's).
        tracer_provider: add flowtel's processors to this provider instead of creating one.
            When no SDK provider is installed globally it is installed, so workflows reach
            it by default; beside another global provider, workflows must be given it
            (``workflow_run(..., tracer_provider=handle.tracer_provider)``), as a warning says.
        sampler: the trace sampler (default: ``OTEL_TRACES_SAMPLER``/``_ARG``); wrapped so
            workflow spans are always recorded. Ignored when a provider is given or installed.
        otlp: export over OTLP (default: on when *otlp_endpoint* or an
            ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variable is set).
        otlp_endpoint: the collector's base URL with scheme, e.g. ``http://localhost:4317``.
        otlp_protocol: ``grpc`` or ``http/protobuf`` (default: ``OTEL_EXPORTER_OTLP_PROTOCOL``,
            else ``grpc``).
        otlp_headers: headers for every export (default: ``OTEL_EXPORTER_OTLP_HEADERS``).
        otlp_timeout: seconds one export may take, retries included (default:
            ``FLOWTEL_OTLP_TIMEOUT``, the ``OTEL_EXPORTER_OTLP_*TIMEOUT`` variables, else 5).
        metrics: record workflow metrics (default: on when OTLP is on or *meter_provider* is
            given).
        meter_provider: record metrics here instead of a provider flowtel creates.
        metrics_interval: seconds between metric exports (default:
            ``OTEL_METRIC_EXPORT_INTERVAL``, else 60).
        logs: set up structlog and stdlib logging with trace ids: ``True``/``"auto"``,
            ``"json"`` or ``"console"``; ``False`` leaves logging alone.
        log_level: the lowest structlog level written (default ``FLOWTEL_LOG_LEVEL`` or INFO).
        shutdown_timeout: seconds :meth:`Flowtel.shutdown` takes at most, also at interpreter
            exit (default: ``FLOWTEL_SHUTDOWN_TIMEOUT``, else 10).
        history: ``"database"`` (write rows from this process) or ``"collector"`` (no
            database: every workflow span, sampled or not, and a start signal per run go to
            the OTLP collector, and ``flowtel ingest`` behind it writes the rows; see
            docs/ingest.md). Default: ``FLOWTEL_HISTORY``, else ``"database"``.
        retention: a retention policy such as ``"completed=30d,failed=180d,cancelled=90d"``
            applied to the history database in the background, a minute after start and then
            at most once an hour, in batches of 500 runs (statuses not named are kept; runs in
            progress never go; each pass is logged with the rows removed). Default:
            ``FLOWTEL_RETENTION``, else off. Ignored in collector mode (``flowtel ingest
            --retention`` prunes there).
        **processor_options: passed to :class:`WorkflowHistorySpanProcessor`, e.g.
            ``spool_dir`` (where rows wait while the database is unreachable; default
            ``FLOWTEL_SPOOL_DIR``, else beside the SQLite file or under the user's cache
            directory), ``spool=False`` (keep them in memory instead), ``spool_after``
            (seconds of failed writes before spooling) and ``heartbeat_interval``.

    Returns:
        The :class:`Flowtel` handle; its ``shutdown`` also runs at interpreter exit.

    Never waits on the database for more than about :data:`STARTUP_CHECK_S`: creating the
    tables and replaying earlier processes' spool happen on the writer's threads.

    Raises:
        SchemaMismatchError: the database answered within :data:`STARTUP_CHECK_S` that it holds
            history tables flowtel cannot write to; the message lists the differences and names
            ``flowtel db upgrade`` (a slower database: the writer logs it at ERROR).
        DatabaseURLError: the URL cannot be parsed or its driver is not installed.
        AlreadyConfiguredError: flowtel is configured already, with other arguments.
        ValueError: *retention* (or ``FLOWTEL_RETENTION``) is not a policy flowtel can read.
    """
    arguments = dict(locals())
    with _configure_lock:
        global _active
        if _active is not None and not _active[0].closed:
            handle, given = _active
            if given == arguments:
                return handle
            raise AlreadyConfiguredError(
                f"flowtel is already configured in this process (history in "
                f"{display_url(handle.database_url)}) with other arguments: call configure() "
                "once, or call shutdown() on its handle before configuring again"
            )
        handle = _configure(arguments)
        _active = (handle, arguments)
        return handle


def _retention_policy(value: str | RetentionPolicy | None) -> RetentionPolicy | None:
    """*value* as a policy; ``None`` (the default) reads ``FLOWTEL_RETENTION``."""
    if isinstance(value, RetentionPolicy):
        return value
    if value is None:
        return policy_from_env()
    if value.strip().lower() in ("", "off"):
        return None
    return RetentionPolicy.parse(value)


def _configure(arguments: dict[str, Any]) -> Flowtel:
    database_url = arguments["database_url"]
    service_name, service_version = arguments["service_name"], arguments["service_version"]
    resource_attributes = arguments["resource_attributes"]
    tracer_provider, sampler = arguments["tracer_provider"], arguments["sampler"]
    otlp, otlp_endpoint = arguments["otlp"], arguments["otlp_endpoint"]
    otlp_protocol, otlp_headers = arguments["otlp_protocol"], arguments["otlp_headers"]
    otlp_timeout, metrics = arguments["otlp_timeout"], arguments["metrics"]
    meter_provider, metrics_interval = arguments["meter_provider"], arguments["metrics_interval"]
    logs, log_level = arguments["logs"], arguments["log_level"]
    shutdown_timeout = arguments["shutdown_timeout"]
    processor_options = dict(arguments["processor_options"])
    retention = _retention_policy(arguments["retention"])
    mode = (arguments["history"] or os.environ.get("FLOWTEL_HISTORY") or "database").strip().lower()
    if mode not in ("database", "collector"):
        raise ValueError(f"history must be 'database' or 'collector', not {mode!r}")
    if mode == "collector":
        if database_url is not None or processor_options:
            ignored = ["database_url"] * (database_url is not None) + sorted(processor_options)
            logger.warning("flowtel: history='collector' writes no rows here; ignored: %s", ignored)
        if retention is not None:
            logger.warning("flowtel: history='collector': retention is flowtel ingest's to apply")
        return _configure_collector_mode(
            service_name, service_version, resource_attributes, tracer_provider, sampler,
            OTLPSettings(otlp_protocol, otlp_endpoint, otlp_headers, otlp_timeout),
            metrics, meter_provider, metrics_interval, logs, log_level, shutdown_timeout,
        )  # fmt: skip
    WorkflowHistorySpanProcessor.check_settings(processor_options)  # before any connection
    url = resolve_database_url(database_url)
    engine = make_engine(url)
    if processor_options.get("create_tables", True):
        try:
            _check_schema_briefly(engine)  # a table flowtel cannot write to fails now
        except SchemaMismatchError:
            engine.dispose()
            raise
    resource = make_resource(service_name, service_version, resource_attributes)
    service = service_name or str(resource.attributes.get("service.name") or "") or None
    settings = OTLPSettings(otlp_protocol, otlp_endpoint, otlp_headers, otlp_timeout)
    export = otlp_requested(otlp, otlp_endpoint)
    if logs is not False:
        configure_logging("auto" if logs is True else str(logs), log_level)
    processor = WorkflowHistorySpanProcessor(engine, service_name=service, **processor_options)
    owns_provider = False
    if tracer_provider is None:
        audit = AuditSampler(sampler or sampler_from_env())
        tracer_provider, owns_provider = global_provider(resource, audit)
    else:
        _reachable(tracer_provider)
    if not isinstance(tracer_provider.sampler, AuditSampler):
        logger.warning(
            "flowtel: the tracer provider's sampler %s is not an AuditSampler; runs it drops "
            "will be missing from the history (build it with sampler=AuditSampler(...))",
            tracer_provider.sampler.get_description(),
        )
    tracer_provider.add_span_processor(processor)
    own_meters: MeterProvider | None = None
    metrics_processor = None
    if metrics if metrics is not None else (export or meter_provider is not None):
        interval = metrics_interval * 1000 if metrics_interval is not None else None
        metrics_processor, own_meters = install_metrics(
            tracer_provider,
            meter_provider,
            lambda: processor.stats,
            resource,
            settings,
            export,
            interval,
        )
    span_export = span_exporter = None
    if export:
        span_exporter = settings.span_exporter()
        sent = span_exporter if export_step_io_from_env() else WithoutStepIO(span_exporter)
        span_export = CountedSpanExport(sent)
        tracer_provider.add_span_processor(span_export)
    handle = Flowtel(
        engine,
        tracer_provider,
        processor,
        span_export,
        owns_provider,
        span_exporter=span_exporter,
        metrics_processor=metrics_processor,
        meter_provider=own_meters,
        shutdown_timeout=shutdown_timeout_from_env(shutdown_timeout),
        retention=None if retention is None else RetentionRunner(engine, retention).start(),
    )
    atexit.register(handle.shutdown)
    logger.debug("flowtel records workflow history to %s", display_url(url))
    return handle


def _configure_collector_mode(
    service_name: str | None,
    service_version: str | None,
    resource_attributes: Mapping[str, Any] | None,
    tracer_provider: TracerProvider | None,
    sampler: Sampler | None,
    settings: OTLPSettings,
    metrics: bool | None,
    meter_provider: otel_metrics.MeterProvider | None,
    metrics_interval: float | None,
    logs: bool | str,
    log_level: int | str,
    shutdown_timeout: float | None,
) -> Flowtel:
    """``configure(history="collector")``: spans and metrics over OTLP, no database."""
    resource = make_resource(service_name, service_version, resource_attributes)
    if logs is not False:
        configure_logging("auto" if logs is True else str(logs), log_level)
    span_exporter = settings.span_exporter()
    span_export = CountedSpanExport(span_exporter)  # the history: what it loses is counted
    forwarder = HistoryForwarder(span_export)
    owns_provider = False
    if tracer_provider is None:
        tracer_provider, owns_provider = global_provider(
            resource, AuditSampler(sampler or sampler_from_env())
        )
    tracer_provider.add_span_processor(forwarder)
    own_meters: MeterProvider | None = None
    metrics_processor = None
    if metrics is not False:
        interval = metrics_interval * 1000 if metrics_interval is not None else None
        metrics_processor, own_meters = install_metrics(
            tracer_provider, meter_provider, lambda: forwarder.stats, resource, settings, True,
            interval,
        )  # fmt: skip
    tracer_provider.add_span_processor(span_export)
    handle = Flowtel(
        None,
        tracer_provider,
        forwarder,
        span_export,
        owns_provider,
        span_exporter=span_exporter,
        metrics_processor=metrics_processor,
        meter_provider=own_meters,
        shutdown_timeout=shutdown_timeout_from_env(shutdown_timeout),
    )
    atexit.register(handle.shutdown)
    logger.debug("flowtel sends workflow history through the collector (flowtel ingest)")
    return handle
