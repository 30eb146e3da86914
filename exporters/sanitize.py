"""Making rows safe to write on every database, cheaply, on the writer thread.

PostgreSQL rejects NUL characters in text and ``\\u0000`` in JSONB, both PostgreSQL and MariaDB
reject lone surrogates (the UTF-8 encoder fails first), and a value wider than its
``VARCHAR(n)`` column fails the whole batch on PostgreSQL. :func:`clean_run_row` and
:func:`clean_step_row` fix the text columns of a rendered row in place: clean ASCII within its
column's width (almost every value) costs a type check, ``isascii`` and a length test; anything
else gets NUL and lone surrogates replaced with U+FFFD and is cut to the column's width.
:func:`dumps_json` is the engine's JSON serializer (installed by ``make_engine``): it writes
JSON that every backend accepts (no ``NaN``, no NUL, no lone surrogates) and bounds it to
``Limits.metadata_bytes``, sharing the budget between a mapping's entries smallest first so
that small fields (timestamps, trace ids) survive a huge one. :func:`span_limits` returns the
OpenTelemetry ``SpanLimits`` that match flowtel's own limits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import SpanLimits
from sqlalchemy import String, Table

from instrumentation.clean import TRUNCATED_KEY, clean_json, scrub
from instrumentation.limits import Limits, get_limits, truncate, truncation_marker

from .schema import workflow_history, workflow_step_history

__all__ = ["clean_run_row", "clean_step_row", "clean_text_value", "dumps_json", "span_limits"]

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


def _size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _json_size(data: Any) -> int:
    return _size(json.dumps(data, ensure_ascii=False))


def _clean_entry(item: Any, max_bytes: int) -> tuple[Any, int]:
    if isinstance(item, (list, tuple)):
        data = [clean_json(x, max_bytes)[0] for x in item]
        return data, _json_size(data)
    data, text = clean_json(item, max_bytes)
    return data, _size(text)


def _head(items: list[Any], max_bytes: int) -> list[Any]:
    kept: list[Any] = []
    used = 2
    for item in items:
        used += _json_size(item) + 2
        if used > max_bytes:
            break
        kept.append(item)
    return kept


def _fit(value: Any, max_bytes: int) -> str:
    """JSON text of *value* within *max_bytes*: a mapping's entries share the budget, smallest
    first; a list cut short keeps its leading items and says ``"<key>_truncated": N``."""
    if not isinstance(value, Mapping):
        return clean_json(value, max_bytes)[1]
    entries = []
    for key, item in value.items():
        data, size = _clean_entry(item, max_bytes)
        entries.append((size, str(key), data))
    remaining = max_bytes - 160  # braces and room for the notes below
    chosen: dict[str, Any] = {}
    notes: dict[str, int] = {}
    for position, (size, key, data) in enumerate(sorted(entries, key=lambda e: e[0])):
        overhead = _size(json.dumps(key, ensure_ascii=False)) + 4
        share = remaining // (len(entries) - position) - overhead
        if size > share:
            if share < 64:
                notes[TRUNCATED_KEY] = notes.get(TRUNCATED_KEY, 0) + 1
                continue
            if isinstance(data, list):
                kept = _head(data, share)
                notes[f"{key}_truncated"] = len(data) - len(kept)
                data = kept
            else:
                data = clean_json(data, share)[0]
            size = _json_size(data)
        chosen[key] = data
        remaining -= size + overhead
    fitted = {key: chosen[key] for _, key, _ in entries if key in chosen}
    for note, count in notes.items():
        if note == TRUNCATED_KEY:
            fitted[note] = truncation_marker(count, "keys")
        else:
            earlier = fitted.get(note)
            fitted[note] = count + (earlier if isinstance(earlier, int) else 0)
    text = json.dumps(fitted, ensure_ascii=False)
    return text if _size(text) <= max_bytes else clean_json(fitted, max_bytes)[1]


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether *value* nests mappings and lists more than *limit* levels deep."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        pending.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def dumps_json(value: Any, *, max_depth: int | None = None) -> str:
    """Serialize a JSON column's value for any backend, within ``Limits.metadata_bytes``.

    The fast path is one ``json.dumps``, a search for ``\\u0000`` and a length check; values
    with NaN, unserializable objects, lone surrogates or too many bytes are rebuilt through
    :func:`instrumentation.clean.clean_json`.

    Args:
        value: the column's value.
        max_depth: the deepest nesting the database accepts (MariaDB: 31); counted only when
            the text holds more brackets than that.
    """
    limit = get_limits().metadata_bytes
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return _fit(value, limit)
    if not text.isascii():
        text = scrub(text)  # lone surrogates can only sit inside strings: still valid JSON
    if "\\u0000" in text or _size(text) > limit:
        return _fit(value, limit)
    if (
        max_depth is not None
        and text.count("{") + text.count("[") > max_depth
        and isinstance(value, (dict, list))
        and _deeper_than(value, max_depth)
    ):
        return _fit(value, limit)
    return text


def span_limits(limits: Limits | None = None) -> SpanLimits:
    """OpenTelemetry ``SpanLimits`` matching flowtel's limits (default: the process-wide ones).

    Attribute values may hold the whole context JSON, and a run span one attribute per
    context key besides flowtel's own, so the SDK never silently cuts or evicts what flowtel
    has already bounded, while other instrumentation's values stay bounded too. Pass the result
    as ``TracerProvider(span_limits=...)``.
    """
    bound = limits or get_limits()
    longest = max(bound.context_bytes, bound.stacktrace_bytes, bound.message_bytes)
    return SpanLimits(
        max_span_attributes=max(128, bound.context_attributes + 32),
        max_attribute_length=longest,
    )
