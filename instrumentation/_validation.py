"""Argument checks for names, ids and numbers, with messages that say what to pass instead.

Names and ids become span names, attributes and indexed columns, so they must be non-empty
strings (names and workflow ids of at most 255 characters, run ids of at most 64: the widths
of their columns) without control characters, line separators, bidirectional overrides or
lone surrogates; a run id must not start with ``legacy-`` (in any case), the prefix of the run
ids of rows imported from the old system; step positions and counts must fit a 32-bit column.
A bad value is rejected at the call with ``TypeError``/``ValueError``, before any span exists,
rather than stored half-broken; a message shows at most a short, redacted excerpt of the
value. Names are low-cardinality, so each distinct valid one is checked once and then found in
a set.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable
from typing import Any

from .redaction import redact_text

__all__ = [
    "MAX_INT32",
    "MAX_NAME_LENGTH",
    "MAX_RUN_ID_LENGTH",
    "RESERVED_RUN_ID_PREFIX",
    "check_name",
    "check_names",
    "check_optional_text",
    "check_position",
    "check_run_id",
    "check_step_position",
    "check_total_steps",
]

MAX_NAME_LENGTH = 255
"""Longest name or workflow id (their columns are ``VARCHAR(255)``)."""
MAX_RUN_ID_LENGTH = 64
"""Longest run id (its columns are ``VARCHAR(64)``)."""
RESERVED_RUN_ID_PREFIX = "legacy-"
"""Prefix of the run ids the migration gives imported rows (``legacy-<id>``); never user-given."""
MAX_INT32 = 2**31 - 1
"""Largest step index, attempt or step count (their columns are 32-bit integers)."""

_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_known_good: set[str] = set()
_KNOWN_GOOD_LIMIT = 10_000


def _shown(value: Any) -> str:
    """A short, redacted excerpt of *value* for an error message."""
    return redact_text(reprlib.repr(value))


def check_name(
    value: Any, what: str, *, max_length: int = MAX_NAME_LENGTH, remember: bool = True
) -> str:
    """Return *value* if it is a usable name or id, else raise.

    Args:
        value: the name to check.
        what: how the message names the argument, e.g. ``"step name"``.
        max_length: the most characters allowed.
        remember: cache the value as known good (for low-cardinality names, not unique ids).

    Raises:
        TypeError: *value* is not a string.
        ValueError: *value* is blank, too long or holds a forbidden character.
    """
    if type(value) is str and value in _known_good and len(value) <= max_length:
        return value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}: {_shown(value)}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty; pass a short identifier such as 'provision'")
    if len(value) > max_length:
        raise ValueError(
            f"{what} is {len(value)} characters long; the limit is {max_length} "
            "(put long details in the context or description instead)"
        )
    if _FORBIDDEN.search(value):
        raise ValueError(
            f"{what} must not contain control characters, line separators, bidirectional "
            f"overrides or lone surrogates: {_shown(value)}; use printable text"
        )
    if remember and len(_known_good) < _KNOWN_GOOD_LIMIT:
        _known_good.add(value)
    return value


def check_run_id(value: Any) -> str:
    """Return *value* if it is a usable run id (a name of at most 64 characters), else raise.

    The check of the reserved prefix ignores case: MariaDB's default collations compare run ids
    case-insensitively, so ``LEGACY-42`` would overwrite the imported row ``legacy-42`` there.

    Raises:
        TypeError: *value* is not a string.
        ValueError: *value* is blank, too long, holds a forbidden character or starts with
            :data:`RESERVED_RUN_ID_PREFIX`.
    """
    run_id = check_name(value, "run_id", max_length=MAX_RUN_ID_LENGTH, remember=False)
    if run_id.lower().startswith(RESERVED_RUN_ID_PREFIX):
        raise ValueError(
            f"run_id must not start with {RESERVED_RUN_ID_PREFIX!r}, which is reserved for runs "
            f"imported from the old workflow_history table: {_shown(value)}; pass another id, "
            "or none for a random one"
        )
    return run_id


def check_names(values: Any, what: str) -> tuple[str, ...]:
    """Return *values* (a list or tuple of names) as a tuple after checking each one.

    Raises:
        TypeError: *values* is a string or not iterable, or an item is not a string.
        ValueError: an item is not a usable name.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a list of names, not {type(values).__name__}")
    return tuple(check_name(v, f"{what}[{i}]") for i, v in enumerate(values))


def check_optional_text(value: Any, what: str) -> None:
    """Raise ``TypeError`` unless *value* is ``None`` or a string."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a string or None, not {type(value).__name__}")


def _check_int(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}: {_shown(value)}")
    if not minimum <= value <= MAX_INT32:
        raise ValueError(f"{what} must be between {minimum} and {MAX_INT32}, not {value}")


def check_position(value: Any, what: str) -> None:
    """Raise unless *value* is ``None`` or a 1-based step index or attempt number.

    Raises:
        TypeError: *value* is not an ``int``.
        ValueError: *value* is below 1 or does not fit 32 bits.
    """
    if value is not None:
        _check_int(value, what, 1)


def check_step_position(index: Any, attempt: Any) -> None:
    """Raise unless *index* and *attempt* are each ``None`` or a valid position (one cheap
    test for the usual case; see :func:`check_position`)."""
    if (index is None or (type(index) is int and 0 < index <= MAX_INT32)) and (
        attempt is None or (type(attempt) is int and 0 < attempt <= MAX_INT32)
    ):
        return
    check_position(index, "index")
    check_position(attempt, "attempt")


def check_total_steps(value: Any) -> None:
    """Raise unless *value* is ``None`` or a step count that fits 32 bits.

    Raises:
        TypeError: *value* is not an ``int``.
        ValueError: *value* is negative or too large.
    """
    if value is not None:
        _check_int(value, "total_steps", 0)
