"""Turning any value a caller passes into redacted, bounded text or JSON every database accepts.

:func:`clean_text` coerces a message, description or stack trace to text, masks secrets in it
(see :mod:`instrumentation.redaction`), replaces NUL characters and lone surrogates with U+FFFD
and cuts it to its limit with an explicit ``…[truncated N bytes]`` marker. :func:`clean_json`
does the same for a whole context: one walk that redacts secret keys, turns non-JSON values
into their ``repr`` (NaN and infinities into ``"nan"``/``"inf"``, integers beyond 64 bits into
text), stops at :data:`~instrumentation.redaction.MAX_DEPTH` levels and at the byte budget
(counting the keys and items it left out), and returns the JSON text, which always fits.
Clean ASCII takes a fast path, so the usual short, plain values cost a few checks. Standard
library only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from .limits import Limits, get_limits, truncate, truncation_marker
from .redaction import DEEP_MARKER, MAX_DEPTH, REDACTED, Redactor, get_redactor

__all__ = [
    "as_text",
    "clean_error_type",
    "clean_json",
    "clean_message",
    "clean_stacktrace",
    "clean_text",
    "keep_log_lines",
    "scrub",
]

_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_CLIP_MARGIN = 4096  # characters kept beyond a cut so that masking sees whole URLs and keys
_INT64 = 1 << 63
_MAX_KEY_BYTES = 1024
TRUNCATED_KEY = "…"
"""The key under which :func:`clean_json` says how many keys of a mapping it left out."""


def scrub(text: str) -> str:
    """Replace NUL characters and lone surrogates with U+FFFD (PostgreSQL, MariaDB and UTF-8
    encoders reject them); clean ASCII is returned as it is."""
    if text.isascii():
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    return _UNSAFE.sub("\ufffd", text)


def as_text(value: object) -> str:
    """*value* as text: a string as it is, bytes decoded, anything else ``str()``; never
    raises (a failing ``__str__`` gives ``<unprintable TypeName>``)."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def clean_text(
    value: object,
    max_bytes: int,
    *,
    keep: Literal["head", "middle"] = "head",
    redactor: Redactor | None = None,
) -> str:
    """Return *value* as redacted, database-safe text of at most *max_bytes* of UTF-8.

    Masking runs before the cut, so a secret is never left half-visible at the edge; very long
    text is first clipped with a margin so that masking stays cheap.

    Args:
        value: any object (see :func:`as_text`).
        max_bytes: the size of the result, truncation marker included.
        keep: ``"head"`` keeps the start, ``"middle"`` both ends (see ``limits.truncate``).
        redactor: the redactor to apply (default: the process-wide one).
    """
    text = value if type(value) is str else as_text(value)
    original: int | None = None
    if len(text) > max_bytes + 2 * _CLIP_MARGIN:
        original = len(text.encode("utf-8", "surrogatepass"))
        if keep == "middle":
            window = max_bytes + _CLIP_MARGIN
            text = f"{text[:window]}\n{text[-window:]}"
            original += 1  # the joining newline is not part of the value
        else:
            text = text[: max_bytes + _CLIP_MARGIN]
    text = scrub((redactor or get_redactor()).redact_text(text))
    return truncate(text, max_bytes, keep=keep, original_bytes=original)


def clean_message(value: object) -> str:
    """A message or description, cleaned to the process-wide ``message_bytes``."""
    return clean_text(value, get_limits().message_bytes)


def clean_stacktrace(value: object) -> str:
    """A stack trace, cleaned to ``stacktrace_bytes`` keeping both ends."""
    return clean_text(value, get_limits().stacktrace_bytes, keep="middle")


def clean_error_type(value: object) -> str:
    """An error type name, made safe and cut to the 255 characters its column holds."""
    return scrub(as_text(value))[:255]


class _Walk:
    """One bounded, redacting copy of a value into plain JSON data."""

    __slots__ = ("budget", "redactor")

    def __init__(self, redactor: Redactor, budget: int) -> None:
        self.redactor = redactor
        self.budget = budget

    def value(self, value: Any, depth: int) -> Any:
        if value is None or value is True or value is False:
            self.budget -= 5
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int):
            if -_INT64 <= value < _INT64:
                self.budget -= 20
                return int(value)
            return self.text(as_text(value))
        if isinstance(value, float):
            if math.isfinite(value):
                self.budget -= 24
                return float(value)
            return self.text(repr(float(value)))
        if isinstance(value, Mapping):
            return self.mapping(value, depth) if depth < MAX_DEPTH else self.text(DEEP_MARKER)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self.sequence(value, depth) if depth < MAX_DEPTH else self.text(DEEP_MARKER)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return self.text(as_text(value))
        return self.text(_safe_repr(value))

    def text(self, value: object) -> str:
        if type(value) is str and self.plain(value):
            self.budget -= len(value) + 2
            return value
        text = clean_text(value, max(self.budget, 64), redactor=self.redactor)
        self.budget -= len(text) + 2
        return text

    def plain(self, text: str) -> bool:
        """Short clean ASCII with nothing to mask: kept as it is (the usual case)."""
        return (
            len(text) * 4 <= self.budget
            and text.isascii()
            and "\x00" not in text
            and self.redactor.is_plain(text)
        )

    def mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        seen = 0
        for key, item in value.items():
            if self.budget <= 0:
                break
            seen += 1
            if type(key) is str and len(key) <= _MAX_KEY_BYTES // 4 and self.plain(key):
                name = key
            else:
                name = clean_text(key, _MAX_KEY_BYTES, redactor=self.redactor)
            self.budget -= len(name) + 4
            if self.redactor.is_secret_key(name):
                self.budget -= len(REDACTED) + 2
                clean[name] = REDACTED
            else:
                clean[name] = self.value(item, depth + 1)
        if seen < len(value):
            clean[TRUNCATED_KEY] = truncation_marker(len(value) - seen, "keys")
        return clean

    def sequence(self, value: Iterable[Any], depth: int) -> list[Any]:
        items = value if isinstance(value, (list, tuple)) else list(value)
        clean: list[Any] = []
        for item in items:
            if self.budget <= 0:
                clean.append(truncation_marker(len(items) - len(clean), "items"))
                break
            clean.append(self.value(item, depth + 1))
            self.budget -= 2
        return clean


def clean_json(value: Any, max_bytes: int, *, redactor: Redactor | None = None) -> tuple[Any, str]:
    """Return ``(data, text)``: *value* as redacted plain JSON data and its JSON text.

    The text (``ensure_ascii=False``, keys sorted) is at most *max_bytes* of UTF-8; a mapping
    stays a mapping (keys become strings), whatever else it holds. Never raises for odd
    values: a mapping that cannot be read becomes a marker.
    """
    active = redactor or get_redactor()
    budget = max_bytes
    size = 0
    for _ in range(4):
        try:
            data = _Walk(active, budget).value(value, 0)
        except Exception as exc:  # a broken Mapping/iterable: record that, not the value
            data = f"<unreadable {type(value).__name__}: {type(exc).__name__}>"
            if isinstance(value, Mapping):
                data = {TRUNCATED_KEY: data}
        text = json.dumps(data, ensure_ascii=False, sort_keys=True)
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        if size <= max_bytes:
            return data, text
        budget = int(budget * max_bytes / size * 0.9)  # escapes or multi-byte text: retry
    marker = truncation_marker(size)
    data = {TRUNCATED_KEY: marker} if isinstance(value, Mapping) else marker
    return data, json.dumps(data, ensure_ascii=False)


def keep_log_lines(lines: Iterable[object], limits: Limits | None = None) -> list[str]:
    """Return the most recent ``log_lines`` of *lines*, each cleaned to ``log_line_bytes``.

    When lines are dropped, the first entry says how many: ``…[truncated 12 lines]``.
    """
    bound = limits or get_limits()
    kept = list(lines)
    dropped = max(0, len(kept) - bound.log_lines)
    if dropped and bound.log_lines:
        dropped += 1  # the marker takes one of the kept places
    tail = kept[dropped:]
    cleaned = [clean_text(line, bound.log_line_bytes) for line in tail]
    return [truncation_marker(dropped, "lines"), *cleaned] if dropped else cleaned
