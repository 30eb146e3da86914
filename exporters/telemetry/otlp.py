"""OTLP export: settings, exporters, the resource, and bounded calls into unbounded SDK ones.

The SDK does not read ``OTEL_EXPORTER_OTLP_PROTOCOL`` itself; :class:`OTLPSettings` does
(``grpc`` or ``http/protobuf``, default ``grpc``) and builds the span and metric exporters for
it. Arguments override the standard ``OTEL_EXPORTER_OTLP_*`` variables, which the exporters
read otherwise. Export is on when asked for or when an endpoint variable is set. The exporter
timeout defaults to 5 s (``FLOWTEL_OTLP_TIMEOUT`` or the OTLP timeout variables change it).
:func:`make_resource` layers flowtel's defaults, the ``OTEL_*`` resource variables and explicit
arguments. :func:`call_with_timeout` runs a flush or shutdown that the SDK does not bound on a
daemon thread, so a collector that is down or silent never holds the caller longer than asked.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter

from instrumentation import __version__

__all__ = [
    "DEFAULT_SHUTDOWN_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "OTLPSettings",
    "abort_exporter",
    "call_all_with_timeout",
    "call_with_timeout",
    "make_resource",
    "otlp_protocol",
    "otlp_requested",
    "shutdown_timeout_from_env",
]

logger = logging.getLogger("flowtel.otlp")

DEFAULT_TIMEOUT_S = 5.0
"""Exporter timeout (seconds, retries included) when neither an argument nor a variable sets one."""
DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
"""How long ``Flowtel.shutdown()`` (and so interpreter exit) may take by default."""

_ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
_TIMEOUT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
)
_PATHS = {"traces": "/v1/traces", "metrics": "/v1/metrics"}


def otlp_requested(otlp: bool | None, endpoint: str | None = None) -> bool:
    """*otlp* if given, else whether an endpoint argument or variable is set."""
    if otlp is not None:
        return otlp
    return bool(endpoint) or any(os.environ.get(name) for name in _ENDPOINT_VARIABLES)


def otlp_protocol(protocol: str | None = None, signal: str = "TRACES") -> str:
    """The OTLP protocol: *protocol*, else the environment's, else ``grpc``.

    Raises:
        ValueError: the protocol is neither ``grpc`` nor ``http/protobuf``.
    """
    value = (
        protocol
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if value not in ("grpc", "http/protobuf"):
        raise ValueError(
            f"unsupported OTLP protocol {value!r}: use 'grpc' or 'http/protobuf' "
            "(OTEL_EXPORTER_OTLP_PROTOCOL)"
        )
    return value


def _check_endpoint(endpoint: str) -> str:
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(
            f"OTLP endpoint {endpoint!r} needs a scheme: http://host:port (plaintext) or "
            "https://host:port (TLS); without one the gRPC exporter silently tries TLS"
        )
    return endpoint.rstrip("/")


def _default_timeout() -> float | None:
    raw = os.environ.get("FLOWTEL_OTLP_TIMEOUT")
    if raw:
        try:
            return float(raw)
        except ValueError:
            logger.warning("ignoring FLOWTEL_OTLP_TIMEOUT=%r: not a number of seconds", raw)
    if any(os.environ.get(name) for name in _TIMEOUT_VARIABLES):
        return None  # the exporters read the standard variables themselves
    return DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class OTLPSettings:
    """Where and how to send OTLP; ``None`` fields fall back to the ``OTEL_*`` variables.

    Attributes:
        protocol: ``grpc`` or ``http/protobuf``.
        endpoint: the collector's base URL with scheme, e.g. ``http://collector:4317``; for
            HTTP the signal path (``/v1/traces``, ``/v1/metrics``) is appended.
        headers: sent with every export (e.g. an API key).
        timeout: seconds one export may take, retries included.
    """

    protocol: str | None = None
    endpoint: str | None = None
    headers: Mapping[str, str] | None = field(default=None)
    timeout: float | None = None

    def _kwargs(self, signal: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.endpoint is not None:
            endpoint = _check_endpoint(self.endpoint)
            if otlp_protocol(self.protocol, signal.upper()) == "http/protobuf":
                endpoint += _PATHS[signal]
            kwargs["endpoint"] = endpoint
        if self.headers is not None:
            kwargs["headers"] = dict(self.headers)
        timeout = self.timeout if self.timeout is not None else _default_timeout()
        if timeout is not None:
            kwargs["timeout"] = timeout
        return kwargs

    def span_exporter(self) -> SpanExporter:
        """The OTLP span exporter for these settings."""
        kwargs = self._kwargs("traces")
        if otlp_protocol(self.protocol, "TRACES") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(**kwargs)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPSpanExporter,
        )

        return HTTPSpanExporter(**kwargs)

    def metric_exporter(self) -> MetricExporter:
        """The OTLP metric exporter for these settings."""
        kwargs = self._kwargs("metrics")
        if otlp_protocol(self.protocol, "METRICS") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
                OTLPMetricExporter,
            )

            return OTLPMetricExporter(**kwargs)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HTTPMetricExporter,
        )

        return HTTPMetricExporter(**kwargs)


def call_with_timeout(function: Callable[[], Any], timeout_s: float, name: str) -> bool:
    """Run *function* on a daemon thread and wait at most *timeout_s* seconds for it.

    The SDK's ``BatchSpanProcessor.force_flush``/``shutdown`` ignore their timeouts and can
    block for 20-30 s while a collector is down; this puts a bound on the caller's wait. A call
    still running at the deadline is left to finish (or die with the process) in the background.

    Returns:
        False when *function* raised, returned ``False`` or was still running at the deadline.
    """
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(function())
        except Exception:
            logger.exception("flowtel: %s failed", name)
            outcome.append(False)

    thread = threading.Thread(target=target, name=f"flowtel-{name}", daemon=True)
    thread.start()
    thread.join(max(timeout_s, 0.0))
    if thread.is_alive():
        logger.warning("flowtel: %s did not finish within %.1f s; not waiting", name, timeout_s)
        return False
    return bool(outcome) and outcome[0] is not False


def call_all_with_timeout(
    calls: list[tuple[Callable[[], Any], str]], deadline: float
) -> dict[str, bool]:
    """Run *calls* concurrently, each bounded by the shared monotonic *deadline*.

    Returns:
        Each call's name → whether it finished in time and succeeded (see
        :func:`call_with_timeout`).
    """
    results: dict[str, bool] = {}

    def run(function: Callable[[], Any], name: str) -> None:
        results[name] = call_with_timeout(function, max(deadline - time.monotonic(), 0.0), name)

    threads = [threading.Thread(target=run, args=call, daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0) + 0.5)
    return {name: results.get(name, False) for _, name in calls}


def abort_exporter(exporter: SpanExporter) -> None:
    """Close the exporter's connection so an export stuck on a silent collector ends now."""
    try:
        exporter.shutdown()
    except Exception:  # pragma: no cover - best effort at exit
        logger.debug("flowtel: aborting the span exporter failed", exc_info=True)


def make_resource(
    service_name: str | None = None,
    service_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Resource:
    """The process's resource: flowtel's defaults, then the environment, then the arguments.

    The defaults are ``service.version`` (flowtel's version), ``host.name`` and ``process.pid``;
    ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` override them, and the arguments
    override both.
    """
    defaults = Resource(
        {
            "service.version": __version__,
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
        }
    )
    explicit: dict[str, Any] = dict(extra or {})
    if service_name:
        explicit["service.name"] = service_name
    if service_version:
        explicit["service.version"] = service_version
    return defaults.merge(Resource.create(explicit))


def shutdown_timeout_from_env(value: float | None) -> float:
    """*value*, else ``FLOWTEL_SHUTDOWN_TIMEOUT`` (seconds), else the 10 s default."""
    if value is not None:
        return value
    raw = os.environ.get("FLOWTEL_SHUTDOWN_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_SHUTDOWN_TIMEOUT_S
    except ValueError:
        logger.warning("ignoring FLOWTEL_SHUTDOWN_TIMEOUT=%r: not a number of seconds", raw)
        return DEFAULT_SHUTDOWN_TIMEOUT_S
