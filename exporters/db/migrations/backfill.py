"""Revision 0001's backfill of old rows: a unique ``run_id`` and what their metadata tells.

Rows without ``run_id`` are read in batches of 1,000 by ascending ``id`` and updated by ``id``
with ``executemany``: ``run_id = 'legacy-<id>'``, ``service_name = 'legacy-import'``, and
``workflow_name``, ``current_step`` and ``duration_ms`` where the old ``metadata`` JSON and
timestamps give them. Only those new columns are written; on MariaDB every column with ``ON
UPDATE CURRENT_TIMESTAMP`` is assigned to itself so the update cannot move it. Frozen with
revision 0001.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["LEGACY_RUN_ID_PREFIX", "LEGACY_SERVICE_NAME", "backfill"]

LEGACY_RUN_ID_PREFIX = "legacy-"
"""``run_id`` of an imported row: this prefix and the row's ``id``."""
LEGACY_SERVICE_NAME = "legacy-import"
"""``service_name`` of an imported row: written by the old system, not by flowtel."""

_BATCH = 1000


def _text(value: Any, limit: int = 255) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _stamp(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    return None


def _duration_ms(started: Any, completed: Any) -> int | None:
    start, end = _stamp(started), _stamp(completed)
    if start is None or end is None or (start.tzinfo is None) != (end.tzinfo is None):
        return None
    millis = int((end - start).total_seconds() * 1000)
    return millis if millis >= 0 else None


def _parse(raw: Any) -> tuple[Mapping[str, Any], bool]:
    """The metadata as a mapping (empty if unusable) and whether it is valid JSON."""
    if raw is None or isinstance(raw, Mapping):
        return (raw or {}), True
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        return {}, False
    return (value if isinstance(value, Mapping) else {}), "\\u0000" not in str(raw)


def _protected(bind: Connection, table: str) -> list[str]:
    """MariaDB/MySQL columns with ``ON UPDATE CURRENT_TIMESTAMP``: assign them to themselves."""
    if bind.dialect.name not in ("mysql", "mariadb"):
        return []
    query = sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() "
        "AND table_name = :table AND LOWER(extra) LIKE '%on update%'"
    )
    return [str(name) for (name,) in bind.execute(query, {"table": table})]


def backfill(bind: Connection, table: str, live: Mapping[str, Any]) -> tuple[int, list[int]]:
    """Fill flowtel's new columns of the rows that have no ``run_id`` yet.

    Args:
        bind: the migration's connection.
        table: the table's name.
        live: its reflected columns, by name (the old table may lack some).

    Returns:
        How many rows were filled, and the ids of those whose metadata is not JSON.
    """
    names = ("id", "run_id", "metadata", "started_at", "completed_at")
    fills = ("run_id", "service_name", "workflow_name", "current_step", "duration_ms")
    protected = _protected(bind, table)
    t = sa.table(table, *(sa.column(name) for name in {*names, *fills, *protected}))
    old = {name: (t.c[name] if name in live else sa.null()) for name in names[2:]}
    update = (
        sa.update(t)
        .where(t.c.id == sa.bindparam("row_id"))
        .values({name: sa.bindparam(f"new_{name}") for name in fills})
        .values({name: t.c[name] for name in protected})
    )
    count, last = 0, None
    not_json: list[int] = []
    while True:
        query = sa.select(t.c.id, *old.values()).where(t.c.run_id.is_(None))
        if last is not None:
            query = query.where(t.c.id > last)
        rows = bind.execute(query.order_by(t.c.id).limit(_BATCH)).all()
        if not rows:
            return count, not_json
        params = []
        for row_id, raw, started, completed in rows:
            meta, valid = _parse(raw)
            if not valid:
                not_json.append(row_id)
            params.append(
                {
                    "row_id": row_id,
                    "new_run_id": f"{LEGACY_RUN_ID_PREFIX}{row_id}",
                    "new_service_name": LEGACY_SERVICE_NAME,
                    "new_workflow_name": _text(meta.get("workflow_name")),
                    "new_current_step": _text(meta.get("current_step_name")),
                    "new_duration_ms": _duration_ms(started, completed),
                }
            )
        bind.execute(update, params)
        count += len(rows)
        last = rows[-1][0]
