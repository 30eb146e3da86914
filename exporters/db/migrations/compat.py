"""Which live column types hold what flowtel writes, database by database.

Types are compared by what is stored, not by how the DDL spells them. Any string type holds a
string of at most its length (SQLite ignores lengths), ``TEXT`` or unbounded ``VARCHAR`` holds
text; integers hold integers, but a ``BIGINT`` column needs ``BIGINT`` except on SQLite. A
timestamp needs ``TIMESTAMP WITH TIME ZONE`` on PostgreSQL and ``DATETIME(6)`` on MariaDB
(``TIMESTAMP`` there shifts with the session's time zone); SQLite keeps it as text. JSON needs
``JSONB`` on PostgreSQL, ``JSON``/``LONGTEXT``/``MEDIUMTEXT`` on MariaDB, text on SQLite.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeEngine

__all__ = ["ddl", "type_holds"]


def _kind(expected: TypeEngine[Any]) -> str:
    if isinstance(expected, sa.TypeDecorator):
        expected = expected.impl_instance
    if isinstance(expected, sa.JSON):
        return "json"
    if isinstance(expected, sa.DateTime):
        return "datetime"
    if isinstance(expected, sa.BigInteger):
        return "bigint"
    if isinstance(expected, sa.Integer):
        return "integer"
    if isinstance(expected, sa.Text):
        return "text"
    return "string"


def type_holds(expected: TypeEngine[Any], live: TypeEngine[Any], dialect: str) -> bool:
    """Whether a *live* column holds what flowtel writes through *expected* on *dialect*.

    Args:
        expected: the column's type in ``exporters/db/schema.py``.
        live: the type reflected from the database.
        dialect: the dialect's name (``sqlite``, ``postgresql``, ``mysql``, ``mariadb``).
    """
    # A type with a variant for this dialect (``with_variant``) is that variant there.
    expected = getattr(expected, "_variant_mapping", {}).get(dialect, expected)
    kind, sqlite = _kind(expected), dialect == "sqlite"
    textual = isinstance(live, (sa.String, sa.types.NullType))
    if kind == "json":
        if dialect == "postgresql":
            return isinstance(live, JSONB)
        if sqlite:
            return isinstance(live, sa.JSON) or textual
        return isinstance(live, (sa.JSON, mysql.LONGTEXT, mysql.MEDIUMTEXT))
    if kind == "datetime":
        if sqlite:
            return isinstance(live, sa.DateTime) or textual
        if dialect == "postgresql":
            return isinstance(live, sa.DateTime) and bool(getattr(live, "timezone", False))
        return isinstance(live, mysql.DATETIME) and (live.fsp or 0) >= 6
    if kind in ("bigint", "integer"):
        if not isinstance(live, sa.Integer) or isinstance(live, sa.SmallInteger):
            return False
        return kind == "integer" or sqlite or isinstance(live, sa.BigInteger)
    if not isinstance(live, sa.String):
        return sqlite and isinstance(live, sa.types.NullType)
    if sqlite or live.length is None:  # SQLite does not enforce lengths
        return True
    if kind == "text":
        return isinstance(live, sa.Text)
    wanted = getattr(expected, "length", None)
    return wanted is None or live.length >= wanted


def ddl(type_: TypeEngine[Any], dialect: sa.Dialect) -> str:
    """*type_* as DDL text on *dialect* (its repr if the dialect cannot render it)."""
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:  # a type the dialect cannot render (NullType ...)
        return repr(type_)
