"""OTLP/HTTP trace request bodies → ``ExportTraceServiceRequest``, as the specification says.

Two encodings (https://opentelemetry.io/docs/specs/otlp/#otlphttp): binary protobuf
(``application/x-protobuf``) and JSON (``application/json``), both decoded with the official
``opentelemetry-proto`` message. OTLP JSON differs from protobuf's canonical JSON mapping in
one way that matters: trace and span ids are hex strings, not base64; they are converted
before ``json_format`` parses the rest (lowerCamelCase keys, enums as integers, 64-bit
integers as strings or numbers; unknown fields are ignored, as the specification requires). A
``Content-Encoding: gzip`` body is inflated first, bounded by the same size limit. Anything that
does not decode raises :class:`BadRequest`, JSON nested deeper than Python's recursion limit
included.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporters.errors import FlowtelError

__all__ = [
    "JSON",
    "PROTOBUF",
    "BadRequest",
    "TooLarge",
    "UnsupportedMediaType",
    "decode_request",
    "media_type",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class BadRequest(FlowtelError, ValueError):
    """The body is not an OTLP trace request in the encoding its content type names (400)."""


class UnsupportedMediaType(BadRequest):
    """Neither ``application/x-protobuf`` nor ``application/json`` (answered with 400 too:
    the specification lists 400 for every request the server cannot process)."""


class TooLarge(BadRequest):
    """The body, or its inflated form, is over the size limit (413)."""


def media_type(content_type: str | None) -> str:
    """The media type of a ``Content-Type`` header, lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_request(
    body: bytes, content_type: str | None, encoding: str | None, max_bytes: int
) -> ExportTraceServiceRequest:
    """Decode one ``POST /v1/traces`` body.

    Raises:
        UnsupportedMediaType: the content type is not one OTLP/HTTP defines.
        TooLarge: the inflated body is over *max_bytes*.
        BadRequest: the body does not decode.
    """
    kind = media_type(content_type)
    if kind not in (PROTOBUF, JSON):
        raise UnsupportedMediaType(f"unsupported content type {kind or '(none)'!r}")
    body = _inflate(body, (encoding or "identity").strip().lower(), max_bytes)
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise BadRequest(f"malformed protobuf: {exc}") from None
        return request
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    if not isinstance(data, dict):
        raise BadRequest("an OTLP JSON request is an object")
    try:
        _hex_ids_to_base64(data)
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        raise BadRequest(f"not an OTLP trace request: {exc}") from None
    except RecursionError:
        raise BadRequest(_TOO_DEEP) from None
    return request


_TOO_DEEP = "malformed JSON: nested too deep (an OTLP request is a few levels deep)"


def _inflate(body: bytes, encoding: str, max_bytes: int) -> bytes:
    if encoding in ("identity", ""):
        return body
    if encoding != "gzip":
        raise UnsupportedMediaType(f"unsupported content encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise BadRequest(f"malformed gzip body: {exc}") from None
    if len(data) > max_bytes or inflater.unconsumed_tail:
        raise TooLarge(f"the inflated body is over {max_bytes} bytes")
    return data


_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """Rewrite OTLP JSON's hex ids (spans and their links) into protobuf JSON's base64."""
    for resource_spans in _items(data, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans"):
                _convert(span)
                for link in _items(span, "links"):
                    _convert(link)


def _items(parent: Any, *keys: str) -> list[Any]:
    if not isinstance(parent, dict):
        raise BadRequest("malformed OTLP JSON: expected an object")
    for key in keys:
        value = parent.get(key)
        if value is not None:
            if not isinstance(value, list):
                raise BadRequest(f"malformed OTLP JSON: {key} is not a list")
            return value
    return []


def _convert(item: Any) -> None:
    if not isinstance(item, dict):
        raise BadRequest("malformed OTLP JSON: a span or link is not an object")
    for key in _ID_KEYS:
        value = item.get(key)
        if not isinstance(value, str) or not value:
            continue
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise BadRequest(f"malformed OTLP JSON: {key} {value[:40]!r} is not hex") from None
        item[key] = base64.b64encode(raw).decode("ascii")
