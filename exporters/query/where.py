"""Filters on any key of a run's context: ``--where KEY=VALUE``, as SQL each database can index.

:func:`parse_where` turns ``KEY=VALUE`` items into a mapping; :func:`where_conditions` turns the
mapping into conditions on ``workflow_history`` that all must hold. A value matches when the
context's value, as text, equals it: ``3`` matches the number 3 and the string ``"3"``, ``true``
the boolean; ``null`` and missing keys never match. PostgreSQL asks its GIN index with ``@>``
(one containment per JSON form the text can have) and checks the text; SQLite looks the pair up
in ``workflow_context`` and checks the row's own JSON, so a stale index entry can never match;
MariaDB, and a SQLite database not yet upgraded, read the JSON of every candidate row. The stored
context is compared, which flowtel redacted before writing it: a secret key matches only
``[REDACTED]``, never its secret. A pair that redaction would change (a secret-looking key, or a
value with a password in it) matches nothing at all, so rows written unredacted by other tools
cannot be found by their secrets either. See :mod:`exporters.db.context_index`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from exporters.db.context_index import CONTEXT_TABLE, has_context_table
from exporters.db.schema import workflow_history
from instrumentation import REDACTED, redact

__all__ = ["DRIVER_LIMIT", "MAX_KEY_LENGTH", "check_key", "parse_where", "where_conditions"]

MAX_KEY_LENGTH = 255
"""The longest context key a filter may name."""
DRIVER_LIMIT = 2000
"""SQLite: a pair with fewer index entries than this drives the query (see ``_sqlite_indexed``)."""

_KEY = re.compile(r'[^"\\\x00-\x1f\x7f]{1,' + str(MAX_KEY_LENGTH) + "}")
_H = workflow_history.c
_CONTEXT = sa.table(
    CONTEXT_TABLE, sa.column("key", sa.String), sa.column("value", sa.String), sa.column("run")
)


def parse_where(items: Iterable[str]) -> dict[str, str]:
    """``["rack=7", "site=ams"]`` as ``{"rack": "7", "site": "ams"}``.

    The key is what precedes the first ``=``; the value is the rest, as given (it may hold ``=``
    and be empty). A key named twice must have the same value both times.

    Raises:
        ValueError: an item has no ``=``, its key is empty or unusable, or a key is given two
            different values; the message shows the item and the expected form.
    """
    where: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals:
            raise ValueError(f"--where {item!r}: expected KEY=VALUE, e.g. --where rack=7")
        check_key(key)
        if where.get(key, value) != value:
            raise ValueError(
                f"--where {key}: given both {where[key]!r} and {value!r}; a run has one value "
                "per key (every --where must match)"
            )
        where[key] = value
    return where


def check_key(key: str) -> None:
    """Raise :class:`ValueError` unless *key* can be filtered on (1-255 characters, no ``"``,
    backslash or control character)."""
    if not _KEY.fullmatch(key):
        raise ValueError(
            f"cannot filter on the context key {key!r}: give 1-{MAX_KEY_LENGTH} characters "
            'without ", backslash or control characters'
        )


def _hidden_by_redaction(key: str, value: str) -> bool:
    """Whether redaction changes the pair: flowtel never stores it, so it must match nothing."""
    return value != REDACTED and redact({key: value}) != {key: value}


def _json_forms(value: str) -> list[Any]:
    """The JSON values whose text is *value*: the string, and the number or boolean it spells."""
    forms: list[Any] = [value]
    try:
        parsed = json.loads(value)
    except ValueError:
        return forms
    if isinstance(parsed, bool | int | float):
        forms.append(parsed)  # 1.50 finds 1.5 too: the text check then decides
    return forms


def _path(key: str) -> str:
    return f'$.context_data."{key}"'


def _sqlite_text(key: str) -> ColumnElement[Any]:
    """The context value of *key* as text on SQLite (``NULL`` for invalid JSON, never an error)."""
    path = _path(key)
    valid = sa.func.json_valid(_H.metadata) == 1
    kind = sa.func.json_type(_H.metadata, path)
    raw = sa.cast(sa.func.json_extract(_H.metadata, path), sa.Text)
    spelled = sa.case((kind == "true", "true"), (kind == "false", "false"), else_=raw)
    return sa.case((valid, spelled), else_=sa.null())


def _condition(key: str, value: str, dialect: str) -> ColumnElement[bool]:
    """The unindexed condition: the row's own context holds *value* as text under *key*."""
    if _hidden_by_redaction(key, value):
        return sa.false()
    if dialect == "postgresql":
        # ``->`` spelled as the index is (SQLAlchemy would write ``metadata['context_data']``)
        context = sa.type_coerce(_H.metadata.op("->")(sa.literal_column("'context_data'")), JSONB)
        found = sa.or_(*(context.contains({key: form}) for form in _json_forms(value)))
        return sa.and_(found, context[key].astext == value)
    if dialect == "sqlite":
        return _sqlite_text(key) == value
    stored = sa.func.json_extract(_H.metadata, sa.literal(_path(key)))
    return sa.and_(sa.func.json_unquote(stored) == value, sa.func.json_type(stored) != "NULL")


def _pair(key: str, value: str) -> Any:
    return sa.and_(_CONTEXT.c.key == key, _CONTEXT.c.value == value)


def _sqlite_indexed(conn: Connection, where: dict[str, str]) -> list[ColumnElement[bool]]:
    """SQLite's conditions through ``workflow_context``, in the plan that suits the values.

    A bounded count of each pair's index entries finds the rarest: when it has fewer than
    :data:`DRIVER_LIMIT` runs, its entries drive the query (``id IN``) and the other pairs are
    point lookups; when every pair is common, each is a point lookup per run while the
    ``started_at`` index is walked newest first, so the first page is found early.
    """
    counts = {
        key: conn.execute(
            sa.select(sa.func.count()).select_from(
                sa.select(_CONTEXT.c.run).where(_pair(key, value)).limit(DRIVER_LIMIT).subquery()
            )
        ).scalar_one()
        for key, value in where.items()
    }
    driver = min(counts, key=counts.__getitem__)
    conditions: list[ColumnElement[bool]] = []
    for key, value in where.items():
        if key == driver and counts[key] < DRIVER_LIMIT:
            conditions.append(_H.id.in_(sa.select(_CONTEXT.c.run).where(_pair(key, value))))
        else:
            runs = sa.select(_CONTEXT.c.run).where(_pair(key, value), _CONTEXT.c.run == _H.id)
            conditions.append(runs.exists())
    # The row's own JSON decides: an entry left by a dropped table can never match.
    return conditions + [_condition(key, value, "sqlite") for key, value in where.items()]


def where_conditions(conn: Connection, where: Mapping[str, str]) -> list[ColumnElement[bool]]:
    """The conditions on ``workflow_history`` for *where* on *conn*'s database (all must hold).

    Raises:
        ValueError: a key cannot be filtered on (see :func:`check_key`).
    """
    pairs = {key: str(value) for key, value in where.items()}
    for key in pairs:
        check_key(key)
    if any(_hidden_by_redaction(key, value) for key, value in pairs.items()):
        return [sa.false()]
    dialect = conn.dialect.name
    if dialect == "sqlite" and pairs and has_context_table(conn):
        return _sqlite_indexed(conn, pairs)
    return [_condition(key, value, dialect) for key, value in pairs.items()]
