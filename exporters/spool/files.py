"""The local spool: row snapshots the database could not take, kept on disk until it can.

One spool per database: its directory is keyed by a hash of the URL without its password
(under ``FLOWTEL_SPOOL_DIR`` or a given root, else beside the SQLite file, else under the
user's cache directory), and its files 0600. Every directory flowtel creates on the way is 0700
whatever the umask; an existing spool directory that another user owns or that its group or
others may write is refused (:class:`~exporters.errors.SpoolDirectoryError`) for spooling and
for replay alike, since a planted file would be replayed into the audit trail. When the spool
cannot be written (disk full, read-only, a file in the way), the writer tries a fallback, a
per-user 0700 directory under the system's temporary directory
(:func:`fallback_spool_directory`). Each writer process appends to its
own file (format: :mod:`exporters.spool.format`), holding an exclusive ``flock`` on it while it is
open, and fsyncs after every batch; a file is sealed (closed, unlocked) when it grows past a
size or when the database answers again, and is then free to be replayed by any process
(:mod:`exporters.spool.replay`). A file appears under its final name only once its writer holds the
lock, so a replayer never takes a file that is still being written.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

from exporters.errors import SpoolDirectoryError
from exporters.spool.format import encode_header, encode_rows

__all__ = [
    "SUFFIX",
    "Spool",
    "SpoolStatus",
    "fallback_spool_directory",
    "private_directory",
    "spool_directory",
    "spool_files",
    "spool_key",
    "spool_status",
]

SUFFIX = ".spool"


def spool_key(url: str | URL) -> str:
    """The spool's name for a database: backend plus a hash of the URL without its password."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    database = parsed.database
    if backend == "sqlite" and database and database != ":memory:":
        database = str(Path(database).expanduser().resolve())
    identity = URL.create(  # no password, no driver, no query: the same database
        backend, parsed.username, None, parsed.host, parsed.port, database
    )
    digest = hashlib.sha256(identity.render_as_string(hide_password=False).encode()).hexdigest()
    return f"{backend}-{digest[:16]}"


def spool_directory(url: str | URL, root: str | os.PathLike[str] | None = None) -> Path | None:
    """Where the spool of *url* lives (``None`` for an in-memory SQLite database).

    Args:
        url: the history database's URL.
        root: a directory holding one spool per database (default: ``FLOWTEL_SPOOL_DIR``;
            without either, a SQLite file's spool is ``<file>-spool`` beside it and any other
            database's is under ``$XDG_CACHE_HOME`` or ``~/.cache``, in ``flowtel/spool``).
    """
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and (not database or database == ":memory:"):
        return None
    root = root or os.environ.get("FLOWTEL_SPOOL_DIR") or None
    if root:
        return Path(root).expanduser() / spool_key(parsed)
    if parsed.get_backend_name() == "sqlite" and database and not database.startswith("file:"):
        path = Path(database).expanduser().resolve()
        return path.with_name(path.name + "-spool")
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "flowtel" / "spool" / spool_key(parsed)


def fallback_spool_directory(key: str) -> Path:
    """The spool directory tried when the usual one cannot be written: under the system's
    temporary directory, in a per-user ``flowtel-<uid>`` directory (0700, checked like a spool
    directory since others can create names there)."""
    return Path(tempfile.gettempdir()) / f"flowtel-{os.geteuid()}" / "spool" / key


def private_directory(directory: Path, *, checked_from: Path | None = None) -> None:
    """Create *directory* and its missing parents 0700 (whatever the umask), and check it.

    Args:
        directory: the spool directory.
        checked_from: an ancestor of *directory* (itself by default): from it down, every
            existing directory must belong to this user and be writable by no one else.

    Raises:
        SpoolDirectoryError: an existing directory that must be private is not.
        OSError: a directory cannot be created (a file in the way, a read-only disk ...).
    """
    strict = checked_from or directory
    missing = [directory, *directory.parents]
    for index, path in enumerate(missing):
        if path.is_dir():
            missing = missing[:index]
            break
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # the umask may have taken bits mkdir's mode asked for
        except FileExistsError:
            pass  # made meanwhile by another process: checked below like any existing one
    for path in [directory, *directory.parents]:
        _check_private(path)
        if path == strict:
            break
    if stat.S_IMODE(os.stat(directory).st_mode) & 0o077:
        os.chmod(directory, 0o700)  # ours, writable by no one else, but readable: make it private


def _check_private(directory: Path) -> None:
    info = os.stat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{directory} is not a directory")
    uid = os.geteuid()
    if info.st_uid != uid:
        raise SpoolDirectoryError(
            directory, f"it belongs to uid {info.st_uid}, not to this process's user ({uid})"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise SpoolDirectoryError(
            directory, f"its group or others may write to it (mode {mode:04o})"
        )


class Spool:
    """The append side of one process's spool (owned by the writer thread).

    Args:
        directory: the spool directory (see :func:`spool_directory`).
        key: the database's :func:`spool_key`, written into each file's header.
        max_file_bytes: a file is sealed (closed and left for replay) past this size.
        checked_from: an ancestor of *directory* from which down every existing directory
            must be private (see :func:`private_directory`; default: *directory* alone).
    """

    def __init__(
        self,
        directory: Path,
        key: str,
        *,
        max_file_bytes: int = 16 << 20,
        checked_from: Path | None = None,
    ) -> None:
        self.directory = directory
        self.checked_from = checked_from
        self.key = key
        self.max_file_bytes = max_file_bytes
        self._fd: int | None = None
        self._size = 0
        self.path: Path | None = None

    def append(
        self, run_rows: Sequence[dict[str, Any]], step_rows: Sequence[dict[str, Any]]
    ) -> int:
        """Append the rows as one batch, fsync it, and return how many records it holds.

        Raises:
            OSError: the disk refused the batch (nothing of it stays in the file).
        """
        lines = encode_rows(run_rows, step_rows)
        if not lines:
            return 0
        data = b"".join(lines)
        fd = self._fd if self._fd is not None else self._open()
        try:
            _write_all(fd, data)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, self._size)  # never leave half a batch before the next one
                os.lseek(fd, self._size, os.SEEK_SET)  # nor a hole: the next write goes here
            except OSError:
                self.seal()
            raise
        self._size += len(data)
        if self._size >= self.max_file_bytes:
            self.seal()
        return len(lines)

    def _open(self) -> int:
        private_directory(self.directory, checked_from=self.checked_from)
        stem = f"{time.time_ns():020d}-{os.getpid()}-{random.getrandbits(32):08x}"
        temporary = self.directory / f".{stem}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            data = encode_header(self.key)
            _write_all(fd, data)
            os.fsync(fd)
            self.path = self.directory / f"{stem}{SUFFIX}"
            os.rename(temporary, self.path)  # visible to replayers only once locked
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._fd, self._size = fd, len(data)
        return fd

    def seal(self) -> None:
        """Close the current file (releasing its lock) so that it can be replayed."""
        fd, self._fd, self.path = self._fd, None, None
        if fd is not None:
            os.close(fd)

    def forget(self) -> None:
        """In a forked child: drop the inherited file without unlocking the parent's."""
        self.seal()  # flock locks belong to the shared open file: the parent keeps its lock


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SpoolStatus:
    """What a spool directory holds: files, records (row snapshots), bytes, oldest file."""

    directory: str
    files: int
    records: int
    bytes: int
    oldest_age_s: float | None

    def to_json(self) -> dict[str, Any]:
        """The status as a JSON-ready dict."""
        return dict(self.__dict__)


def spool_files(directory: Path) -> list[Path]:
    """The spool's files, oldest first (their names start with the creation time).

    Raises:
        SpoolDirectoryError: the directory exists but is not private to this user (its files
            are not to be trusted).
    """
    try:
        _check_private(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return _listing(directory)


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))
    except (FileNotFoundError, NotADirectoryError):
        return []


def spool_status(directory: Path) -> SpoolStatus:
    """Count the records in *directory* (headers and torn records are not counted; a
    directory refused for replay is counted all the same: counting trusts nothing in it)."""
    files = _listing(directory)
    records = size = 0
    oldest: int | None = None
    for path in files:
        lines = 0
        try:
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    size += len(chunk)
                    lines += chunk.count(b"\n")
        except FileNotFoundError:
            continue  # replayed meanwhile
        records += max(0, lines - 1)
        created = int(path.name.split("-", 1)[0]) if path.name[0].isdigit() else None
        if created is not None and (oldest is None or created < oldest):
            oldest = created
    age = max(0.0, (time.time_ns() - oldest) / 1e9) if oldest is not None else None
    return SpoolStatus(str(directory), len(files), records, size, age)
