"""Size limits for everything flowtel records, each cut marked ``…[truncated N bytes]``.

One immutable :class:`Limits` holds the bounds: the context and metadata JSON (64 KiB each),
messages (4 KiB), stack traces (16 KiB, cut in the middle so the innermost frames stay), the
steps listed in a run's metadata (500), the log lines kept per step (20 of at most 1 KiB) and
the context keys copied to individual span attributes (64; the whole context is always in
``workflow.context_json``). :func:`set_limits` swaps the process-wide one, which starts from
the environment: ``FLOWTEL_MAX_CONTEXT_BYTES``, ``FLOWTEL_MAX_METADATA_BYTES``,
``FLOWTEL_MAX_MESSAGE_BYTES``, ``FLOWTEL_MAX_STACKTRACE_BYTES`` (sizes such as ``65536``,
``64K`` or ``1MiB``), ``FLOWTEL_MAX_METADATA_STEPS``, ``FLOWTEL_MAX_LOG_LINES``,
``FLOWTEL_MAX_LOG_LINE_BYTES`` and ``FLOWTEL_MAX_CONTEXT_ATTRIBUTES``; an invalid value is
logged and ignored at import, and raises ``ValueError`` from :meth:`Limits.from_env`. The
functions that apply the limits live in :mod:`instrumentation.clean`. Standard library only.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import Literal

__all__ = [
    "ENV_VARIABLES",
    "Limits",
    "get_limits",
    "set_limits",
    "truncate",
    "truncation_marker",
]

ENV_VARIABLES: dict[str, str] = {
    "context_bytes": "FLOWTEL_MAX_CONTEXT_BYTES",
    "metadata_bytes": "FLOWTEL_MAX_METADATA_BYTES",
    "message_bytes": "FLOWTEL_MAX_MESSAGE_BYTES",
    "stacktrace_bytes": "FLOWTEL_MAX_STACKTRACE_BYTES",
    "metadata_steps": "FLOWTEL_MAX_METADATA_STEPS",
    "log_lines": "FLOWTEL_MAX_LOG_LINES",
    "log_line_bytes": "FLOWTEL_MAX_LOG_LINE_BYTES",
    "context_attributes": "FLOWTEL_MAX_CONTEXT_ATTRIBUTES",
    "io_bytes": "FLOWTEL_MAX_IO_BYTES",
}
"""The environment variable that sets each :class:`Limits` field."""

_MINIMUM = {"context_bytes": 256, "metadata_bytes": 1024, "message_bytes": 64}
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20}
_UNITS["mib"] = 1 << 20
_SIZE = re.compile(r"\s*(\d+)\s*([a-zA-Z]*)\s*")

logger = logging.getLogger("flowtel")


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Size limits (bytes of UTF-8 unless stated); immutable, shared by all threads.

    Args:
        context_bytes: the run context as JSON.
        metadata_bytes: a run row's ``metadata`` JSON.
        message_bytes: a step or run message, an exception message, a description.
        stacktrace_bytes: an exception's stack trace.
        metadata_steps: steps listed in a run's metadata (the rest are counted).
        log_lines: log lines kept per step (the most recent).
        log_line_bytes: one kept log line.
        context_attributes: context keys copied to ``workflow.context.<key>`` attributes.
        io_bytes: a step's recorded input, and its output, each as JSON.
    """

    context_bytes: int = 64 * 1024
    metadata_bytes: int = 64 * 1024
    message_bytes: int = 4 * 1024
    stacktrace_bytes: int = 16 * 1024
    metadata_steps: int = 500
    log_lines: int = 20
    log_line_bytes: int = 1024
    context_attributes: int = 64
    io_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Limits.{field.name} must be an int, not {type(value).__name__}")
            minimum = _MINIMUM.get(field.name, 64 if field.name.endswith("_bytes") else 0)
            if value < minimum:
                raise ValueError(f"Limits.{field.name} must be at least {minimum}, not {value}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """Build limits from the ``FLOWTEL_MAX_*`` variables (unset ones keep the default).

        Raises:
            ValueError: a variable is not a whole number (with an optional K/M unit for sizes)
                or is below its minimum; the message names the variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for name, variable in ENV_VARIABLES.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            match = _SIZE.fullmatch(raw)
            unit = match.group(2).lower() if match else "?"
            sized = name.endswith("_bytes")
            if match is None or unit not in _UNITS or (unit and not sized):
                example = "a size such as 65536 or 64K" if sized else "a whole number such as 20"
                raise ValueError(f"{variable}={raw!r} is not {example}")
            values[name] = int(match.group(1)) * _UNITS[unit]
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"{exc} (set by the FLOWTEL_MAX_* environment variables)") from None


def _initial_limits() -> Limits:
    try:
        return Limits.from_env()
    except ValueError as exc:
        logger.warning("flowtel ignores its size limit variables: %s", exc)
        return Limits()


_limits = _initial_limits()


def get_limits() -> Limits:
    """Return the process-wide limits."""
    return _limits


def set_limits(limits: Limits) -> None:
    """Install *limits* process-wide (affects values recorded afterwards).

    Raises:
        TypeError: *limits* is not a :class:`Limits`.
    """
    global _limits
    if not isinstance(limits, Limits):
        raise TypeError(f"set_limits() takes a Limits, not {type(limits).__name__}")
    _limits = limits


def truncation_marker(removed: int, unit: str = "bytes") -> str:
    """The text that replaces what a cut removed: ``…[truncated 120 bytes]``."""
    return f"…[truncated {removed} {unit}]"


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _boundary(data: bytes, cut: int) -> int:
    while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:
        cut -= 1  # never split a multi-byte character
    return cut


def truncate(
    text: str,
    max_bytes: int,
    *,
    keep: Literal["head", "middle"] = "head",
    original_bytes: int | None = None,
) -> str:
    """Return *text* cut to at most *max_bytes* of UTF-8, the cut marked in place.

    Args:
        text: the text to bound.
        max_bytes: the size of the result, marker included.
        keep: ``"head"`` keeps the start; ``"middle"`` keeps a quarter from the start and the
            rest from the end (for stack traces, whose end matters most).
        original_bytes: the size before an earlier cut, so the marker counts everything
            removed (default: the size of *text*).
    """
    if len(text) * 4 <= max_bytes and original_bytes is None:
        return text
    data = _utf8(text)
    total = len(data) if original_bytes is None else original_bytes
    if total <= max_bytes:
        return text
    room = max_bytes - len(_utf8(truncation_marker(total)))
    if room <= 0:
        return truncation_marker(total)
    if keep == "middle":
        head = _boundary(data, room // 4)
        start = len(data) - (room - head)
        while start < len(data) and data[start] & 0xC0 == 0x80:
            start += 1  # the kept tail starts on a character boundary, never before the room
        tail = len(data) - start
        kept_head, kept_tail = data[:head], data[len(data) - tail :]
        marker = truncation_marker(total - head - tail)
        return f"{kept_head.decode('utf-8', 'surrogatepass')}{marker}" + kept_tail.decode(
            "utf-8", "surrogatepass"
        )
    head = _boundary(data, room)
    return data[:head].decode("utf-8", "surrogatepass") + truncation_marker(total - head)
