"""The spool's file format: framed JSON lines that survive a torn write.

A spool file starts with a header record (format version, the database's spool key, the run
and step column lists, which columns are times) and then holds one record per line, framed as
``<payload length hex> <crc32 hex> <payload>\\n`` where the payload is a compact JSON array:
``["r", <run row values>]`` or ``["s", <step row values>]``, in the header's column order,
times as integer microseconds since the epoch. Reading checks each line's length and checksum,
so a record torn by a crash or a power cut (no newline, or fewer bytes than announced) and a
damaged one are skipped with a warning naming the file and offset, and handed to the reader's
``on_damage`` callback to be counted and kept; reading resynchronises on the next valid frame,
also one that a lost newline ran into the damaged line. Column lists in the header let a newer
flowtel read an older file; a file whose header is damaged is read with this version's columns
(:func:`fallback_header`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import operator
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from exporters.db.schema import RUN_COLUMNS, STEP_COLUMNS, UTCDateTime, workflow_history
from exporters.db.schema import workflow_step_history as _steps
from exporters.db.timestamps import EPOCH

__all__ = [
    "FORMAT_VERSION",
    "RUN",
    "STEP",
    "SpoolHeader",
    "encode_header",
    "encode_rows",
    "fallback_header",
    "read_header",
    "read_records",
]

logger = logging.getLogger("flowtel.spool")

FORMAT_VERSION = 1
RUN, STEP = "r", "s"
_MICROSECOND = dt.timedelta(microseconds=1)
_DATETIMES = sorted(
    c.name for t in (workflow_history, _steps) for c in t.columns if isinstance(c.type, UTCDateTime)
)


def _frame(payload: bytes) -> bytes:
    return b"%x %08x %s\n" % (len(payload), zlib.crc32(payload), payload)


def _unframe(line: bytes) -> Any:
    """The JSON value of one framed line, or ``None`` if the line is torn or damaged."""
    if not line.endswith(b"\n"):
        return None
    parts = line[:-1].split(b" ", 2)
    if len(parts) != 3:
        return None
    try:
        length, crc = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        return None
    payload = parts[2]
    if len(payload) != length or zlib.crc32(payload) != crc:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None


# where a frame may start inside a damaged line: "<length hex> <crc32 hex> "
_FRAME_START = re.compile(rb"[0-9a-f]{1,8} [0-9a-f]{8} ")


def _resync(line: bytes) -> tuple[int, Any]:
    """The first valid frame that starts inside damaged *line*: ``(its offset, value)``, or
    ``(len(line), None)`` when there is none."""
    for match in _FRAME_START.finditer(line, 1):
        value = _unframe(line[match.start() :])
        if value is not None:
            return match.start(), value
    return len(line), None


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return (value - EPOCH) // _MICROSECOND
    return str(value)  # anything else the database's JSON type would not take either


_dumps = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode
_run_values = operator.itemgetter(*RUN_COLUMNS)
_step_values = operator.itemgetter(*STEP_COLUMNS)


def encode_header(key: str) -> bytes:
    """The framed header line of a new spool file for the database *key*."""
    header = {
        "flowtel_spool": FORMAT_VERSION,
        "db": key,
        "columns": {RUN: list(RUN_COLUMNS), STEP: list(STEP_COLUMNS)},
        "datetimes": _DATETIMES,
        "created_ns": time.time_ns(),
        "pid": os.getpid(),
    }
    return _frame(_dumps(header).encode())


def encode_rows(
    run_rows: Sequence[dict[str, Any]], step_rows: Sequence[dict[str, Any]]
) -> list[bytes]:
    """One framed line per row (runs first), ready to append."""
    lines = [_frame(_dumps((RUN, *_run_values(row))).encode()) for row in run_rows]
    lines += [_frame(_dumps((STEP, *_step_values(row))).encode()) for row in step_rows]
    return lines


@dataclass(frozen=True)
class SpoolHeader:
    """The first record of a spool file: which database it belongs to and its columns."""

    key: str
    columns: dict[str, list[str]]
    datetimes: frozenset[str]
    created_ns: int

    def decode(self, record: Any) -> tuple[str, dict[str, Any]] | None:
        """``(kind, row)`` from one decoded record, or ``None`` if it is not a row."""
        if not isinstance(record, list) or not record or record[0] not in self.columns:
            return None
        kind = record[0]
        names = self.columns[kind]
        if len(record) != len(names) + 1:
            return None
        row = dict(zip(names, record[1:], strict=True))
        for name in self.datetimes:
            value = row.get(name)
            if isinstance(value, int):
                row[name] = EPOCH + dt.timedelta(microseconds=value)
        for name in RUN_COLUMNS if kind == RUN else STEP_COLUMNS:
            row.setdefault(name, None)  # a column added since the file was written
        return kind, row


def fallback_header(key: str) -> SpoolHeader:
    """The header this version writes for *key*: used to read a file whose header is damaged
    (its records are checked against these columns one by one)."""
    return SpoolHeader(
        key, {RUN: list(RUN_COLUMNS), STEP: list(STEP_COLUMNS)}, frozenset(_DATETIMES), 0
    )


def _parse_header(value: Any) -> SpoolHeader | None:
    if not isinstance(value, dict) or value.get("flowtel_spool") != FORMAT_VERSION:
        return None
    columns = value.get("columns")
    if not isinstance(columns, dict) or set(columns) != {RUN, STEP}:
        return None
    return SpoolHeader(
        str(value.get("db")),
        {kind: [str(c) for c in names] for kind, names in columns.items()},
        frozenset(value.get("datetimes") or ()),
        int(value.get("created_ns") or 0),
    )


def read_records(
    handle: BinaryIO,
    name: str,
    offset: int = 0,
    limit: int | None = None,
    on_damage: Callable[[int, bytes], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(offset after the record, decoded JSON)`` from *offset* of an open spool file.

    A torn or damaged record is skipped with a warning naming *name* and its byte offset, and
    its bytes are passed to *on_damage* ``(offset, bytes)``; a valid frame that a lost newline
    ran into the damaged line is still read.
    """
    handle.seek(offset)
    position = offset
    count = 0
    for line in handle:
        start, position = position, position + len(line)
        value = _unframe(line)
        if value is None:
            cut, value = _resync(line) if line.endswith(b"\n") else (len(line), None)
            logger.warning(
                "flowtel skipped a %s spool record at byte %d of %s (%d bytes)",
                "damaged" if line.endswith(b"\n") else "torn",
                start,
                name,
                cut,
            )
            if on_damage is not None:
                on_damage(start, line[:cut])
            if value is None:
                continue
        yield position, value
        count += 1
        if limit is not None and count >= limit:
            return


def read_header(handle: BinaryIO, name: str) -> tuple[SpoolHeader | None, int]:
    """The file's header and the offset of its first record (``None`` if its first line is
    not a valid header: see :func:`fallback_header`)."""
    handle.seek(0)
    line = handle.readline()
    value = _unframe(line) if line else None
    header = _parse_header(value) if value is not None else None
    return header, (len(line) if header is not None else 0)
