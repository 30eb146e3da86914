"""The writer's fast timestamp paths give exactly what the slow, obvious ones give.

``exporters.db.timestamps`` adds microseconds to a cached whole second (as a datetime, ISO text
or, for the UTC timestamp type's SQLite binding, SQLite's text); each must agree with plain
datetime arithmetic and formatting on any instant, including ones before the epoch, at second
boundaries and at the end of the calendar, and the bulk writer must bind through that type.
"""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy.dialects import sqlite

from exporters.db.bulk import _bulk
from exporters.db.schema import UTCDateTime
from exporters.db.timestamps import iso_text, to_datetime

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EDGES = [
    -1_000,
    1_000,
    999_999_000,
    1_000_000_000,
    1_766_000_000_000_000_000,
    1_766_000_000_999_999_999,
    253_402_300_799_999_999_000,  # 9999-12-31 23:59:59.999999
]


def _instants() -> list[int]:
    rng = random.Random(20261126)
    return EDGES + [
        rng.randrange(-2_000_000_000 * 10**9, 4_000_000_000 * 10**9) for _ in range(2000)
    ]


def test_to_datetime_matches_plain_arithmetic() -> None:
    for ns in _instants():
        expected = EPOCH + dt.timedelta(microseconds=ns // 1000)
        got = to_datetime(ns)
        assert got == expected and got is not None and got.tzinfo is dt.UTC, ns
    assert to_datetime(None) is None and to_datetime(0) is None


def test_iso_text_matches_isoformat() -> None:
    for ns in _instants():
        expected = (EPOCH + dt.timedelta(microseconds=ns // 1000)).isoformat()
        assert iso_text(ns) == expected, ns
    assert iso_text(None) is None and iso_text(0) is None


def _plain_sqlite_text(value: dt.datetime) -> str:
    """The obvious formatting the UTC timestamp type must match on SQLite."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def test_sqlite_timestamp_binding_matches_plain_formatting() -> None:
    dialect = sqlite.dialect()
    processor = UTCDateTime().bind_processor(dialect)
    assert processor is not None
    step = _bulk(dialect, "step")
    bound = dict(step._processors)[step.columns.index("started_at")]
    assert bound is processor  # the bulk writer binds through the type's own processor
    for ns in _instants():
        value = to_datetime(ns)
        assert value is not None
        assert processor(value) == _plain_sqlite_text(value), ns
    naive = dt.datetime(2026, 1, 2, 3, 4, 5, 6)  # naive means UTC already
    other = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    whole = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    for value in (naive, other, whole):
        assert processor(value) == _plain_sqlite_text(value), value
    assert processor(other) == "2026-01-02 01:04:05.000006"
    assert processor(None) is None
