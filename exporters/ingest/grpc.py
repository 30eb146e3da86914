"""The OTLP/gRPC trace receiver behind ``flowtel ingest --listen-grpc``: ``TraceService/Export``.

The collector's ``loadbalancing`` exporter speaks only OTLP/gRPC to its backends, so ingest
serves ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` too, with grpcio's
threaded server, as the second protocol of an :class:`~exporters.ingest.server.IngestServer`:
its sink, bearer-token check, size limit, retry delay and in-flight slots, and the same decoder
and adapter. Answers, as the OTLP/gRPC specification gives them: ``OK`` with an empty
``ExportTraceServiceResponse`` once the rows are committed; ``RESOURCE_EXHAUSTED`` *with*
``google.rpc.RetryInfo`` (in ``grpc-status-details-bin``) when too many requests are in flight
or too much is queued, and ``UNAVAILABLE`` with it when the rows were not committed in time, so
the client backs off and retries; ``INVALID_ARGUMENT`` for a message that does not decode or
spans ingest refuses; ``RESOURCE_EXHAUSTED`` *without* ``RetryInfo`` (not retryable, as the
specification says) for a message over the size limit, which is grpcio's own answer past
``grpc.max_receive_message_length``; ``UNAUTHENTICATED`` without the bearer token
(``authorization: Bearer ...`` metadata, compared in constant time). Like OTLP/HTTP it binds to
loopback unless a token is set, and a bad request is answered and counted, never fatal.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from exporters.access import is_loopback
from exporters.ingest.adapt import workflow_spans
from exporters.ingest.decode import PROTOBUF, BadRequest, TooLarge, decode_request
from exporters.ingest.server import IngestServer, InsecureListenError, parse_listen
from exporters.ingest.sink import Outcome

__all__ = ["DEFAULT_LISTEN_GRPC", "EXPORT_METHOD", "GrpcIngestServer", "GrpcStats"]

logger = logging.getLogger("flowtel.ingest")

DEFAULT_LISTEN_GRPC = "127.0.0.1:4317"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT_METHOD = f"/{SERVICE}/Export"
_DETAILS_KEY = "grpc-status-details-bin"

_NOT_COMMITTED = (grpc.StatusCode.UNAVAILABLE, True, "the history database did not commit")
_ANSWERS: dict[str, tuple[grpc.StatusCode, bool, str]] = {
    # Outcome name → (code, retryable: RetryInfo attached, message). By name, so that members a
    # newer sink adds are mapped when present; an unknown one is answered as not committed.
    "BUSY": (grpc.StatusCode.RESOURCE_EXHAUSTED, True, "too much is queued; retry later"),
    "NOT_COMMITTED": _NOT_COMMITTED,
    "TOO_LARGE": (grpc.StatusCode.RESOURCE_EXHAUSTED, False, "the request is too large"),
    "INVALID": (grpc.StatusCode.INVALID_ARGUMENT, False, "the request's spans are invalid"),
}


@dataclass
class GrpcStats:
    """Requests the gRPC front end answered itself, before or instead of the sink (they only
    grow; the sink counts everything it was handed)."""

    unauthenticated: int = 0
    malformed: int = 0
    too_many_in_flight: int = 0
    internal_errors: int = 0
    unknown_outcomes: int = 0


class GrpcIngestServer:
    """Serves OTLP/gRPC ``TraceService/Export`` beside an :class:`IngestServer`, as its second
    protocol: the same sink, bearer token, size limit, retry delay and in-flight slots.

    Args:
        http: the OTLP/HTTP server whose sink and rules apply (it need not be serving).
        listen: ``host:port`` (port 0 picks a free one; see :attr:`port`); anything but loopback
            needs *http* to have a token.
        threads: grpcio's worker threads; a request past *http*'s in-flight limit still gets one
            and is answered RESOURCE_EXHAUSTED (retryable) at once.
    """

    def __init__(
        self, http: IngestServer, listen: str = DEFAULT_LISTEN_GRPC, *, threads: int = 36
    ) -> None:
        host, port = parse_listen(listen)
        if not is_loopback(host) and http.authorized(None):  # authorized without a token
            raise InsecureListenError(
                f"flowtel ingest refuses to serve gRPC on {host} without a token: anyone who "
                "can reach it could write history. Give --token (or FLOWTEL_INGEST_TOKEN) and "
                "set the collector's exporter headers: {authorization: 'Bearer <token>'}"
            )
        self.http = http
        self.sink = http.sink
        self.stats = GrpcStats()
        self._lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {"Export": grpc.unary_unary_rpc_method_handler(self._export)},  # bytes in, bytes out
        )
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flowtel-grpc"),
            handlers=[handler],
            options=[
                ("grpc.max_receive_message_length", http.max_body_bytes),
                ("grpc.so_reuseport", 0),  # a second replica on the same port fails, loudly
            ],
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises this when it cannot bind
            raise OSError(f"cannot bind {address}: {exc}") from None
        if self.port == 0:  # older grpcio answers 0 instead
            raise OSError(f"cannot bind {address}")
        self.host = host

    @property
    def target(self) -> str:
        """``host:port`` for a gRPC client (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def start(self) -> GrpcIngestServer:
        """Serve on grpcio's threads (returns at once)."""
        self._server.start()
        return self

    def shutdown(self, grace: float = 10.0) -> None:
        """Refuse new requests, let those in flight finish for up to *grace* seconds."""
        self._server.stop(grace).wait(grace + 1)

    def snapshot(self) -> dict[str, Any]:
        """The front end's own counters."""
        with self._lock:
            return asdict(self.stats)

    # -- the RPC ---------------------------------------------------------------------------
    def _export(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        if not self._authorized(context):
            self._count("unauthenticated")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
        if not self.http.acquire():
            self._count("too_many_in_flight")
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, True, "too many requests")
        try:
            answer = self._submit(body)
        finally:
            self.http.release()
        if answer is None:
            return ExportTraceServiceResponse().SerializeToString()
        self._refuse(context, *answer)

    def _submit(self, body: bytes) -> tuple[grpc.StatusCode, bool, str] | None:
        """None once committed, else how to refuse."""
        try:  # as OTLP/HTTP decodes a protobuf body (grpcio has already decompressed it)
            request = decode_request(body, PROTOBUF, None, self.http.max_body_bytes)
            spans = list(workflow_spans(request))
        except TooLarge as exc:
            self._count("malformed")
            return grpc.StatusCode.RESOURCE_EXHAUSTED, False, str(exc)
        except BadRequest as exc:
            self._count("malformed")
            return grpc.StatusCode.INVALID_ARGUMENT, False, str(exc)
        except Exception:  # never stop the service: answer, log, go on
            self._count("internal_errors")
            logger.exception("flowtel ingest could not decode a gRPC request")
            return grpc.StatusCode.UNAVAILABLE, True, "internal error"
        try:
            received = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
            outcome = self.sink.submit(spans, received)
        except Exception:  # never stop the service: answer, log, go on
            self._count("internal_errors")
            logger.exception("flowtel ingest could not handle a gRPC request")
            return grpc.StatusCode.UNAVAILABLE, True, "internal error"
        if outcome is Outcome.COMMITTED:
            return None
        answer = _ANSWERS.get(outcome.name)
        if answer is None:
            self._count("unknown_outcomes")
            logger.error(
                "flowtel ingest: the sink answered %r, which the gRPC front end does not know; "
                "asking the client to retry (upgrade exporters/ingest/grpc.py)",
                outcome,
            )
            return _NOT_COMMITTED
        return answer

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        """The HTTP server's bearer check on the ``authorization`` metadata (one value)."""
        values = [v for k, v in context.invocation_metadata() if k == "authorization"]
        given = values[0] if len(values) == 1 else None
        if isinstance(given, bytes):  # only "-bin" keys carry bytes; be safe anyway
            given = given.decode("utf-8", "replace")
        return self.http.authorized(given)

    def _refuse(
        self, context: grpc.ServicerContext, code: grpc.StatusCode, retry: bool, message: str
    ) -> NoReturn:
        """Abort with *code*; a retryable refusal carries RetryInfo, as OTLP/gRPC asks."""
        status = Status(code=code.value[0], message=message)
        if retry:
            delay = Duration(seconds=self.http.retry_after)
            status.details.add().Pack(RetryInfo(retry_delay=delay))
        context.set_trailing_metadata(((_DETAILS_KEY, status.SerializeToString()),))
        context.abort(code, message)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)
