"""Replaying the spool into the database: oldest file first, a chunk per transaction.

:class:`Replayer` claims one spool file at a time with a non-blocking ``flock`` (a file still
being written, or being replayed by another process, is passed over), upserts its records in
chunks, and deletes the file once every chunk has committed. A chunk that fails is retried from
its first record later, and a file interrupted half-way is replayed again from its start: the
upserts are idempotent and monotonic (see :mod:`exporters.db.upsert`), so a record applied twice,
or after a newer one, changes nothing. Within a chunk, snapshots of the same run or step are
folded by the very rule the database applies, because PostgreSQL refuses to upsert one key
twice in one statement. A chunk the database refuses for its data (not for an outage) is
halved until the refused rows are isolated; those are set aside in ``rejected.jsonl`` (0600,
with the error) and everything else is replayed. Damaged or torn records are skipped and the
reading resynchronises on the next valid frame; a damaged header costs only itself (the file
is read with this version's columns). Every skipped record and byte is counted in the result
and the skipped bytes are kept beside the file in ``<file>.damaged`` (0600) for inspection. A
file of another database is left alone; one without a single readable record is renamed
``*.corrupt``. The writer thread calls :meth:`Replayer.replay_chunk`
between batches; :func:`replay_spool` drains a spool in one call (``configure()`` does at start).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.engine import Engine

from exporters.db.bulk import bulk_upsert_rows
from exporters.db.check import prepare_schema
from exporters.db.driver_errors import describe, refused
from exporters.db.engine import display_url
from exporters.db.json import dumps_text
from exporters.db.upsert import other_step, run_replaces, step_replaces
from exporters.spool.files import spool_directory, spool_files, spool_key, spool_status
from exporters.spool.format import (
    RUN,
    SpoolHeader,
    fallback_header,
    read_header,
    read_records,
)

__all__ = ["ReplayResult", "Replayer", "fold_rows", "replay_spool"]

logger = logging.getLogger("flowtel.spool")


class _Damage:
    """Skipped spool records of one replayer: counted, and their bytes kept in ``*.damaged``."""

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0
        self.files: list[str] = []
        self._seen: set[tuple[str, int]] = set()  # a file replayed again counts once

    def keep(self, path: Path, offset: int, data: bytes) -> None:
        if (path.name, offset) in self._seen:
            return
        self._seen.add((path.name, offset))
        self.records += 1
        self.bytes += len(data)
        damaged = path.with_name(path.name + ".damaged")
        try:
            fd = os.open(damaged, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            logger.error("flowtel could not keep a damaged spool record in %s: %s", damaged, exc)
            return
        if str(damaged) not in self.files:
            self.files.append(str(damaged))


class _Claim:
    """One spool file, locked for replay, and how far it has been replayed."""

    def __init__(
        self, path: Path, handle: BinaryIO, header: SpoolHeader, offset: int, damage: _Damage
    ) -> None:
        self.path, self.handle, self.header, self.offset = path, handle, header, offset
        self.damage = damage

    def _damaged(self, offset: int, data: bytes) -> None:
        self.damage.keep(self.path, offset, data)

    def read(self, limit: int) -> tuple[list[tuple[str, dict[str, Any]]], int, bool]:
        """Up to *limit* rows from the current offset, the offset after them, and EOF."""
        rows: list[tuple[str, dict[str, Any]]] = []
        end, seen = self.offset, 0
        records = read_records(self.handle, str(self.path), self.offset, limit, self._damaged)
        for position, value in records:
            start, end, seen = end, position, seen + 1
            decoded = self.header.decode(value)
            if decoded is None:
                logger.warning("flowtel skipped a spool record that is not a row in %s", self.path)
                self._damaged(start, dumps_text(value).encode() + b"\n")
                continue
            rows.append(decoded)
        return rows, end, seen < limit

    def finish(self) -> None:
        """Delete the replayed file, then unlock it."""
        self.path.unlink(missing_ok=True)
        self.handle.close()


def fold_rows(
    rows: Sequence[tuple[str, dict[str, Any]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fold snapshots of the same key the way the upsert guards would, in order.

    A step row of another step under a key already taken is a conflict: the first is kept, as
    the database would, and the others are logged at WARNING.
    """
    runs: dict[str, dict[str, Any]] = {}
    steps: dict[tuple[str, str], dict[str, Any]] = {}
    conflicts: list[tuple[str, str]] = []
    for kind, row in rows:
        if kind == RUN:
            current = runs.get(row["run_id"])
            if current is None or run_replaces(
                current["status"], current["seq"], row["status"], row["seq"]
            ):
                runs[row["run_id"]] = row
        else:
            key = (row["run_id"], row["span_id"])
            current = steps.get(key)
            if current is None or step_replaces(current, row):
                steps[key] = row
            elif other_step(current, row):
                conflicts.append(key)
    if conflicts:
        logger.warning(
            "flowtel kept %d spooled step row(s) out of the history: another step of the same "
            "run holds the same span id (first: run %s span %s)",
            len(conflicts),
            *conflicts[0],
        )
    return list(runs.values()), list(steps.values())


class Replayer:
    """Replays one spool directory a chunk at a time; owned by one thread.

    Args:
        directory: the spool directory (see :func:`~exporters.spool.files.spool_directory`).
        key: the database's spool key; files written for another database are left alone.
        chunk_rows: records per transaction.
    """

    def __init__(self, directory: Path, key: str, *, chunk_rows: int = 2_000) -> None:
        self.directory = directory
        self.key = key
        self.chunk_rows = chunk_rows
        self.files_replayed = 0
        self.rows_replayed = 0
        self.rows_rejected = 0
        self.damage = _Damage()
        self._claim: _Claim | None = None
        self._passed: set[str] = set()

    def replay_chunk(self, engine: Engine) -> int:
        """Replay the next chunk; return its row count (0: nothing left that is free).

        Raises:
            Exception: whatever the database raised; the chunk will be replayed again.
        """
        claim = self._claim or self._claim_next()
        while claim is not None:
            rows, end, eof = claim.read(self.chunk_rows)
            rejected = self._upsert(engine, rows) if rows else 0
            self.rows_rejected += rejected
            claim.offset = end
            if eof:
                claim.finish()
                self._claim = None
                self.files_replayed += 1
            self.rows_replayed += len(rows) - rejected
            if rows:
                return len(rows)
            claim = self._claim_next()
        return 0

    def _upsert(self, engine: Engine, rows: list[tuple[str, dict[str, Any]]]) -> int:
        """Upsert *rows* in one transaction, halving to isolate refused rows; count those."""
        try:
            runs, steps = fold_rows(rows)
            with engine.begin() as connection:
                bulk_upsert_rows(connection, runs, steps)
            return 0
        except Exception as exc:
            if not refused(exc):
                raise
            if len(rows) > 1:
                half = len(rows) // 2
                return self._upsert(engine, rows[:half]) + self._upsert(engine, rows[half:])
            self._reject(rows[0], exc)
            return 1

    def _reject(self, record: tuple[str, dict[str, Any]], exc: Exception) -> None:
        path = self.directory / "rejected.jsonl"
        error = describe(exc)
        line = dumps_text({"kind": record[0], "row": record[1], "error": error})
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)
        logger.error("flowtel set aside a row the database refused (%s) in %s", error, path)

    def _claim_next(self) -> _Claim | None:
        for path in spool_files(self.directory):
            if path.name in self._passed:
                continue
            claim = self._try_claim(path)
            if claim is not None:
                self._claim = claim
                return claim
        return None

    def _try_claim(self, path: Path) -> _Claim | None:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - kept open (and locked) across chunks
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # still being written, or replayed by another process
            return None
        if os.fstat(handle.fileno()).st_nlink == 0:
            handle.close()  # replayed and deleted by another process meanwhile
            return None
        header, offset = read_header(handle, str(path))
        if header is None and self._has_a_row(handle, path):
            logger.error(
                "flowtel found the header of the spool file %s damaged; replaying its records "
                "with this version's columns (skipped bytes kept in %s.damaged)",
                path,
                path.name,
            )
            header, offset = fallback_header(self.key), 0
        if header is None:
            logger.error("flowtel cannot read the spool file %s; renamed it *.corrupt", path)
            path.rename(path.with_name(path.name + ".corrupt"))
            handle.close()
            return None
        if header.key != self.key:
            logger.error("flowtel left %s alone: it was spooled for another database", path)
            self._passed.add(path.name)
            handle.close()
            return None
        return _Claim(path, handle, header, offset, self.damage)

    def _has_a_row(self, handle: BinaryIO, path: Path) -> bool:
        """Whether a file without a readable header holds a record that is a row of ours."""
        header = fallback_header(self.key)
        return any(header.decode(value) for _, value in read_records(handle, str(path)))

    def release(self) -> None:
        """Unlock the file being replayed (it will be replayed again from its start)."""
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.handle.close()


@dataclass(frozen=True)
class ReplayResult:
    """What :func:`replay_spool` did."""

    directory: str | None
    files: int
    rows: int
    remaining_files: int
    seconds: float
    error: str | None = None
    rows_rejected: int = 0
    records_skipped: int = 0
    """Damaged or torn records skipped (their bytes are kept in the ``damaged`` files)."""
    bytes_skipped: int = 0
    damaged: tuple[str, ...] = ()
    """The ``<spool file>.damaged`` files holding what was skipped."""

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        values = dict(self.__dict__)
        values["damaged"] = list(self.damaged)
        return values


def replay_spool(
    engine: Engine,
    spool_dir: str | os.PathLike[str] | None = None,
    *,
    timeout: float | None = None,
    create_tables: bool = True,
) -> ReplayResult:
    """Replay the spool of *engine*'s database, oldest file first; never raises.

    Args:
        engine: the history database.
        spool_dir: the root holding one spool per database, as given to the processor
            (default: ``FLOWTEL_SPOOL_DIR``, else beside the SQLite file or in the cache dir).
        timeout: stop after this many seconds (the rest is replayed later by the writer).
        create_tables: create the tables first if they do not exist.

    Returns:
        Files and rows replayed, files left (still being written, or the database failed:
        ``error`` says why, with the password masked).
    """
    started = time.monotonic()
    directory = spool_directory(engine.url, spool_dir)
    if directory is None:
        return ReplayResult(None, 0, 0, 0, 0.0)
    replayer = Replayer(directory, spool_key(engine.url))
    error = None
    try:
        if create_tables and spool_files(directory):
            prepare_schema(engine)
        while replayer.replay_chunk(engine):
            if timeout is not None and time.monotonic() - started >= timeout:
                break
    except Exception as exc:
        error = _describe(exc, engine)
        logger.warning("flowtel could not replay its spool %s: %s", directory, error)
    finally:
        replayer.release()
    return ReplayResult(
        str(directory),
        replayer.files_replayed,
        replayer.rows_replayed,
        spool_status(directory).files,  # never raises, even for a directory refused above
        time.monotonic() - started,
        error,
        replayer.rows_rejected,
        replayer.damage.records,
        replayer.damage.bytes,
        tuple(replayer.damage.files),
    )


def _describe(exc: Exception, engine: Engine) -> str:
    return f"{describe(exc, engine.url)} ({display_url(engine.url)})"
