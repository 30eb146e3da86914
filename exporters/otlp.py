"""OTLP trace export: choosing gRPC or HTTP, and deciding whether export is on at all.

The SDK does not read ``OTEL_EXPORTER_OTLP_PROTOCOL`` itself; this module does
(``grpc`` or ``http/protobuf``, default ``grpc``). Export is on when asked for explicitly or
when any ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variable is set. Endpoints, headers and timeouts
otherwise come from the standard ``OTEL_EXPORTER_OTLP_*`` variables, which the exporters read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["make_span_exporter", "otlp_protocol", "otlp_requested"]

_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def otlp_requested(otlp: bool | None) -> bool:
    """*otlp* if given, else whether an OTLP endpoint variable is set."""
    if otlp is not None:
        return otlp
    return any(os.environ.get(name) for name in _ENDPOINT_VARIABLES)


def otlp_protocol(protocol: str | None = None) -> str:
    """The OTLP protocol to use: *protocol*, else the environment's, else ``grpc``."""
    value = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if value not in ("grpc", "http/protobuf"):
        raise ValueError(
            f"unsupported OTLP protocol {value!r}: use 'grpc' or 'http/protobuf' "
            "(OTEL_EXPORTER_OTLP_PROTOCOL)"
        )
    return value


def make_span_exporter(
    *,
    protocol: str | None = None,
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> SpanExporter:
    """Build the OTLP span exporter for *protocol* (arguments override the environment)."""
    kwargs: dict[str, object] = {}
    if endpoint is not None:
        kwargs["endpoint"] = endpoint
    if headers is not None:
        kwargs["headers"] = dict(headers)
    if timeout is not None:
        kwargs["timeout"] = timeout
    if otlp_protocol(protocol) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(**kwargs)  # type: ignore[arg-type]
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter(**kwargs)  # type: ignore[call-overload,no-any-return]
