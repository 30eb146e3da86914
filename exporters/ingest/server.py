"""The OTLP/HTTP trace receiver behind ``flowtel ingest``: ``POST /v1/traces``, nothing more.

Built on the standard library's ``ThreadingHTTPServer``: one thread per connection suits a
handler that blocks until its rows are committed, the collector's ``otlphttp`` exporter keeps
few connections (one per queue consumer) and no dependency is added. Answers, as the OTLP/HTTP
specification gives them: 200 with an empty ``ExportTraceServiceResponse`` (in the request's
encoding) once every span is committed, an empty request included (spans kept out because
their run belongs to another sender are listed in its ``partial_success``); 400 for a body that
does not decode, a content type OTLP does not define, or a span the history refuses (the
message names the attribute); 413 past ``max_body_bytes`` or for more spans than the writer's
queue could ever take; 429 (too many requests in flight, or no room in the queue for the whole
request now) or 503 (rows not committed in time) with ``Retry-After`` so the collector backs
off and retries; 401 without the bearer token when one is set (compared in constant time). The
listen backlog holds 1,024 connections, so a burst of clients waits to be answered 200 or 429
instead of being reset. ``GET /health`` answers 200 while every history writer runs and 503
naming the one that does not; ``GET /stats`` (token required too) gives the counters. A bad
request is answered and forgotten: no error stops the service. It binds to loopback by default
and refuses any other address without a token.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)

from exporters.access import is_loopback, token_matches
from exporters.db.json import dumps_text
from exporters.errors import FlowtelError
from exporters.ingest.decode import (
    JSON,
    BadRequest,
    TooLarge,
    decode_request,
    media_type,
)
from exporters.ingest.sink import Answer, IngestSink, Outcome

__all__ = ["DEFAULT_LISTEN", "IngestServer", "InsecureListenError", "parse_listen"]

logger = logging.getLogger("flowtel.ingest")

DEFAULT_LISTEN = "127.0.0.1:4318"
TRACES_PATH = "/v1/traces"


class InsecureListenError(FlowtelError, ValueError):
    """A non-loopback address without a token: anyone on the network could write history."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:4318`` for IPv6) → ``(host, port)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)



class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # the listen backlog (the standard library's is 5): see above
    ingest: IngestServer


class IngestServer:
    """Serves ``POST /v1/traces`` into an :class:`IngestSink`.

    Args:
        sink: where the decoded spans go.
        listen: ``host:port`` (port 0 picks a free one; see :attr:`address`).
        token: the bearer token every request must carry (required off loopback).
        max_body_bytes: largest body accepted, after gzip inflation too (413 past it).
        max_in_flight: requests handled at once; more are answered 429.
        retry_after: seconds put in ``Retry-After`` with 429 and 503.
        read_timeout: seconds a connection may stall while sending its request.
    """

    def __init__(
        self,
        sink: IngestSink,
        listen: str = DEFAULT_LISTEN,
        *,
        token: str | None = None,
        max_body_bytes: int = 8 * 1024 * 1024,
        max_in_flight: int = 32,
        retry_after: int = 2,
        read_timeout: float = 30.0,
    ) -> None:
        host, port = parse_listen(listen)
        if not is_loopback(host) and not token:
            raise InsecureListenError(
                f"flowtel ingest refuses to listen on {host} without a token: anyone who can "
                "reach it could write history. Give --token (or FLOWTEL_INGEST_TOKEN) and set "
                "the collector's otlphttp exporter headers: {Authorization: 'Bearer <token>'}"
            )
        self.sink = sink
        self.max_body_bytes = max_body_bytes
        self.retry_after = retry_after
        self._token = token or None
        self._slots = threading.BoundedSemaphore(max_in_flight)
        handler = type("_BoundHandler", (_Handler,), {"timeout": read_timeout})
        self._server = _Server((host, port), handler)
        self._server.ingest = self
        self._thread: threading.Thread | None = None
        self._serving = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` actually bound."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``)."""
        host, port = self.address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (from another thread or a signal handler)."""
        self._serving.set()
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._serving.clear()

    def start(self) -> IngestServer:
        """Serve on a background thread (tests, benchmarks)."""
        self._serving.set()  # a shutdown() right after start() still stops the loop
        self._thread = threading.Thread(target=self.serve_forever, name="flowtel-ingest")
        self._thread.daemon = True
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop accepting requests and close the socket (the sink is closed separately)."""
        if self._serving.is_set():
            self._server.shutdown()  # waits for serve_forever's loop: only when it runs
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def authorized(self, header: str | None) -> bool:
        """Whether *header* (``Authorization``) carries the token (see
        :func:`exporters.access.token_matches`: ``Bearer`` in any case or Basic; constant time)."""
        return self._token is None or token_matches(header, self._token)

    def acquire(self) -> bool:
        """Take a request slot without waiting."""
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "flowtel-ingest"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # the base's parameter name
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/health"):
            problems = self.server.ingest.sink.problems()
            if problems:
                self._plain(HTTPStatus.SERVICE_UNAVAILABLE, "\n".join(problems))
            else:
                self._plain(HTTPStatus.OK, "ok")
        elif path == "/stats":  # counters: requests, spans, refusals, each writer's stats
            if not self.server.ingest.authorized(self.headers.get("Authorization")):
                self._refuse(HTTPStatus.UNAUTHORIZED, "a bearer token is required", bearer=True)
                return
            body = dumps_text(self.server.ingest.sink.snapshot()).encode()
            self._send(HTTPStatus.OK, body, JSON)
        else:
            self._plain(HTTPStatus.NOT_FOUND, "not found")

    def do_POST(self) -> None:
        ingest = self.server.ingest
        if self.path.split("?", 1)[0] != TRACES_PATH:
            self._refuse(HTTPStatus.NOT_FOUND, f"only POST {TRACES_PATH} is served")
            return
        if not ingest.authorized(self.headers.get("Authorization")):
            self._refuse(HTTPStatus.UNAUTHORIZED, "a bearer token is required", bearer=True)
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self._refuse(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return
        size = int(length)
        if size > ingest.max_body_bytes:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"over {ingest.max_body_bytes} bytes")
            return
        if not ingest.acquire():
            self._discard(size)
            self._retry(HTTPStatus.TOO_MANY_REQUESTS, "too many requests in flight")
            return
        try:
            self._export(ingest, self.rfile.read(size))
        finally:
            ingest.release()

    def _export(self, ingest: IngestServer, body: bytes) -> None:
        content_type = self.headers.get("Content-Type")
        try:
            request = decode_request(
                body, content_type, self.headers.get("Content-Encoding"), ingest.max_body_bytes
            )
        except TooLarge as exc:
            self._plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
            return
        except BadRequest as exc:
            self._plain(HTTPStatus.BAD_REQUEST, str(exc))
            return
        try:
            answer = ingest.sink.export(request)
        except Exception:  # never stop the service: answer, log, go on
            logger.exception("flowtel ingest could not handle a request")
            self._retry(HTTPStatus.SERVICE_UNAVAILABLE, "internal error")
            return
        outcome = answer.outcome
        if outcome is Outcome.COMMITTED:
            self._success(content_type, answer)
        elif outcome is Outcome.BUSY:
            self._retry(HTTPStatus.TOO_MANY_REQUESTS, answer.message)
        elif outcome is Outcome.TOO_LARGE:
            limit = ingest.sink.capacity
            self._plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{answer.message} (at most {limit})")
        elif outcome is Outcome.INVALID:
            self._plain(HTTPStatus.BAD_REQUEST, answer.message)
        else:
            self._retry(HTTPStatus.SERVICE_UNAVAILABLE, answer.message)

    # -- answers ---------------------------------------------------------------------------
    def _success(self, content_type: str | None, answer: Answer) -> None:
        response = ExportTraceServiceResponse()
        if answer.rejected:
            response.partial_success.rejected_spans = answer.rejected
            response.partial_success.error_message = answer.message
        if media_type(content_type) == JSON:
            body = json.dumps(json_format.MessageToDict(response)).encode()
            self._send(HTTPStatus.OK, body, JSON)
        else:
            self._send(HTTPStatus.OK, response.SerializeToString(), "application/x-protobuf")

    def _retry(self, status: HTTPStatus, message: str) -> None:
        retry = str(self.server.ingest.retry_after)
        self._plain(status, message, {"Retry-After": retry})

    def _refuse(self, status: HTTPStatus, message: str, *, bearer: bool = False) -> None:
        """Answer without reading the body, and close the connection."""
        self.close_connection = True
        headers = {"Connection": "close"}
        if bearer:
            headers["WWW-Authenticate"] = 'Bearer realm="flowtel ingest"'
        self._plain(status, message, headers)

    def _discard(self, size: int) -> None:
        while size > 0:
            chunk = self.rfile.read(min(size, 65536))
            if not chunk:
                break
            size -= len(chunk)

    def _plain(
        self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, message.encode(), "text/plain; charset=utf-8", headers)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
