"""flowtel's one JSON encoder: bounded text for JSON columns, plain text for people and files.

:func:`json_default` is the one ``default=`` hook (timestamps as ISO 8601 UTC with ``Z``, enums
as their value, records through their ``to_json()``, anything else as text); :func:`json_ready`
applies the same conversions ahead of time and :func:`dumps_text` writes output (``--json``,
``rejected.jsonl``) with it. :func:`dumps_json` is installed as the engine's ``json_serializer`` by
:func:`~exporters.db.engine.make_engine`. It writes JSON that every backend accepts (no
``NaN``, no NUL, no lone surrogates) and bounds it to ``Limits.metadata_bytes``, sharing the
budget between a mapping's entries smallest first so that small fields (timestamps, trace ids)
survive a huge one.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections.abc import Mapping
from typing import Any

from instrumentation.clean import TRUNCATED_KEY, clean_json, scrub
from instrumentation.limits import get_limits, truncation_marker

__all__ = ["dumps_json", "dumps_text", "iso_utc", "json_default", "json_ready"]


def iso_utc(value: dt.datetime) -> str:
    """*value* as ISO 8601 UTC with microseconds and ``Z`` (naive values are taken as UTC)."""
    utc = value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return utc.isoformat(timespec="microseconds").replace("+00:00", "Z")


def json_default(value: Any) -> Any:
    """The ``default=`` hook of every JSON flowtel writes for people and files."""
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, enum.Enum):
        return value.value
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    return str(value)


def json_ready(value: Any) -> Any:
    """*value* with :func:`json_default`'s conversions applied (lists, tuples and mappings item
    by item), ready for any JSON encoder."""
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, enum.Enum) or not (value is None or isinstance(value, str | int | float)):
        return json_default(value)
    return value


def dumps_text(value: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON text of *value* for output (UTF-8 kept, :func:`json_default` for the rest).

    *sort_keys* gives one order whatever the database kept (PostgreSQL's ``jsonb`` reorders
    keys by length)."""
    return json.dumps(
        value, ensure_ascii=False, indent=indent, default=json_default, sort_keys=sort_keys
    )


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


_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode
"""``json.dumps(value, ensure_ascii=False, allow_nan=False)`` without building an encoder per
call (``json.dumps`` reuses one only for its default arguments)."""


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
        text = _ENCODE(value)
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
