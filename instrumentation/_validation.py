"""Argument checks for names and ids, with messages that say what to pass instead.

Names become span names and indexed columns, so they must be non-empty strings of at most
255 characters without control characters; a bad one is rejected at the call, before any span
exists, rather than stored half-broken.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MAX_NAME_LENGTH", "check_name", "check_optional_text", "check_total_steps"]

MAX_NAME_LENGTH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_known_good: set[str] = set()
_KNOWN_GOOD_LIMIT = 10_000


def check_name(value: Any, what: str) -> str:
    """Return *value* if it is a usable name or id, else raise ``TypeError``/``ValueError``."""
    if type(value) is str and value in _known_good:  # low-cardinality: each checked once
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}: {value!r}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty; pass a short identifier such as 'provision'")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{what} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH} "
            "(put long details in the context or description instead)"
        )
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters: {value!r}")
    if len(_known_good) < _KNOWN_GOOD_LIMIT:
        _known_good.add(value)
    return value


def check_optional_text(value: Any, what: str) -> None:
    """Raise ``TypeError`` unless *value* is ``None`` or a string."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a string or None, not {type(value).__name__}")


def check_total_steps(value: Any) -> None:
    """Raise unless *value* is ``None`` or a non-negative ``int``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"total_steps must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"total_steps must be zero or more, not {value}")
