"""Making rows safe to write on every database, cheaply, on the writer thread.

PostgreSQL rejects NUL characters in text and ``\\u0000`` in JSONB, both PostgreSQL and MariaDB
reject lone surrogates (the UTF-8 encoder fails first), and a value wider than its
``VARCHAR(n)`` column fails the whole batch on PostgreSQL. :func:`clean_run_row` and
:func:`clean_step_row` fix the text columns of a rendered row in place: clean ASCII within its
column's width (almost every value) costs a type check, ``isascii`` and a length test; anything
else gets NUL and lone surrogates replaced with U+FFFD and is cut to the column's width.
The engine's JSON serializer lives in :mod:`exporters.db.json`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, Table

from exporters.db.schema import workflow_history, workflow_step_history
from instrumentation.clean import scrub
from instrumentation.limits import Limits, get_limits, truncate

__all__ = ["clean_run_row", "clean_step_row", "clean_text_value"]

_STACKTRACE_COLUMNS = frozenset({"error_stacktrace"})


def _text_columns(table: Table) -> tuple[tuple[str, int], ...]:
    """``(column, width)`` of each text column of *table*: ``VARCHAR(n)`` columns are n
    characters wide; ``Text`` columns get 0 and are bounded by the limits at write time."""
    return tuple(
        (column.name, column.type.length or 0)
        for column in table.columns
        if isinstance(column.type, String)
    )


_RUN_TEXT = _text_columns(workflow_history)
_STEP_TEXT = _text_columns(workflow_step_history)


def clean_text_value(value: str, width: int) -> str:
    """*value* with NUL and lone surrogates replaced and cut to *width* characters (the last
    one becomes ``…`` when cut)."""
    value = scrub(value)
    return value if len(value) <= width else value[: width - 1] + "…"


def _clean(row: dict[str, Any], columns: tuple[tuple[str, int], ...]) -> dict[str, Any]:
    limits: Limits | None = None
    for name, width in columns:
        value = row.get(name)
        if value is None:
            continue
        if width == 0:  # Text: a message or a stack trace, bounded in bytes
            limits = limits or get_limits()
            middle = name in _STACKTRACE_COLUMNS
            size = limits.stacktrace_bytes if middle else limits.message_bytes
            if (
                type(value) is str
                and len(value) <= size
                and value.isascii()
                and "\x00" not in value
            ):
                continue
            text = scrub(value if isinstance(value, str) else str(value))
            row[name] = truncate(text, size, keep="middle" if middle else "head")
            continue
        if type(value) is str and value.isascii() and len(value) <= width and "\x00" not in value:
            continue
        row[name] = clean_text_value(value if isinstance(value, str) else str(value), width)
    return row


def clean_run_row(row: dict[str, Any]) -> dict[str, Any]:
    """Make the text columns of a ``workflow_history`` row safe (in place; returns *row*)."""
    return _clean(row, _RUN_TEXT)


def clean_step_row(row: dict[str, Any]) -> dict[str, Any]:
    """Make the text columns of a ``workflow_step_history`` row safe (in place; returns *row*)."""
    return _clean(row, _STEP_TEXT)
