"""flowtel's errors on the consumer side, one hierarchy under :class:`FlowtelError`.

Each keeps the built-in base it always had, so existing handlers still catch it. Messages say
what was wrong and what to do; database URLs in them have their password masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from instrumentation.errors import FlowtelError

__all__ = [
    "MIN_PREFIX_LENGTH",
    "AlreadyConfiguredError",
    "AmbiguousRunError",
    "DatabaseFileError",
    "DatabaseURLError",
    "FlowtelError",
    "RunNotFoundError",
    "SchemaMismatchError",
    "SpoolDirectoryError",
    "UnsupportedDatabaseError",
]

MIN_PREFIX_LENGTH = 4
"""Shortest run-id prefix a run lookup accepts."""


class AlreadyConfiguredError(FlowtelError, RuntimeError):
    """``configure()`` was called again, with other arguments, while its handle is live."""


class DatabaseURLError(FlowtelError, ValueError):
    """The database URL cannot be parsed or names a driver that is not installed."""


class UnsupportedDatabaseError(FlowtelError, ValueError):
    """The database's dialect has no upsert flowtel knows how to write."""


class _Report(Protocol):
    @property
    def database(self) -> str: ...

    @property
    def differences(self) -> Sequence[Any]: ...

    @property
    def blocking(self) -> Sequence[Any]: ...


class SchemaMismatchError(FlowtelError, ValueError):
    """The history tables exist but flowtel cannot write to them as they are.

    Attributes:
        report: the full :class:`~exporters.db.check.SchemaReport`.
    """

    def __init__(self, report: _Report) -> None:
        self.report = report
        shown = [f"  - {d}" for d in report.blocking]
        others = len(report.differences) - len(report.blocking)
        if others:
            shown.append(f"  (and {others} more that do not block writes)")
        super().__init__(
            f"flowtel cannot record workflow history in {report.database}: the tables differ "
            "from what it writes:\n" + "\n".join(shown) + "\n"
            f"Back the database up, then run: flowtel db upgrade --db {report.database}\n"
            f"(and `flowtel db check --db {report.database}` to see the result)"
        )


class RunNotFoundError(FlowtelError, LookupError):
    """No run matches the reference given to a run lookup.

    Attributes:
        ref: the reference that matched nothing.
        suggestion: the closest existing run id or workflow id, or ``None``.
    """

    def __init__(self, ref: str, suggestion: str | None = None) -> None:
        self.ref = ref
        self.suggestion = suggestion
        message = f"no run found for {ref!r} (tried run id, workflow id and run-id prefix)"
        if len(ref) < MIN_PREFIX_LENGTH:
            message += f"; a run-id prefix needs at least {MIN_PREFIX_LENGTH} characters"
        if suggestion is not None:
            message += f"; did you mean {suggestion!r}?"
        super().__init__(message)


class AmbiguousRunError(FlowtelError, LookupError):
    """A run-id prefix matches several runs.

    Attributes:
        ref: the prefix.
        candidates: the matching run ids (at most ten), newest first.
    """

    def __init__(self, ref: str, candidates: Sequence[str]) -> None:
        self.ref = ref
        self.candidates = list(candidates)
        super().__init__(
            f"{ref!r} matches several runs ({', '.join(self.candidates)}); give more characters"
        )


class SpoolDirectoryError(FlowtelError, PermissionError):
    """A spool directory someone else could write to: flowtel neither spools nor replays there.

    A file planted in the spool would be replayed into the audit trail, so an existing spool
    directory must belong to the user flowtel runs as and must not be writable by its group
    or by others.

    Attributes:
        directory: the directory refused.
        reason: what is wrong with it.
    """

    def __init__(self, directory: object, reason: str) -> None:
        self.directory = str(directory)
        self.reason = reason
        super().__init__(
            f"flowtel refuses the spool directory {self.directory}: {reason}; check what it "
            "holds, then chown it to this user and `chmod 700` it, or set FLOWTEL_SPOOL_DIR "
            "elsewhere (a file planted there would be replayed into the workflow history)"
        )


class DatabaseFileError(FlowtelError, OSError):
    """The SQLite database file or its directory cannot be created or opened.

    An :class:`OSError` (``errno`` from the cause), so existing handlers still catch it; the
    message names the path and says what to do.

    Attributes:
        path: the database file flowtel was asked to use.
    """

    def __init__(self, path: str, cause: OSError) -> None:
        reason = cause.strerror or type(cause).__name__
        where = f" ({cause.filename})" if cause.filename not in (None, path) else ""
        super().__init__(
            f"cannot create the SQLite history database {path}: {reason}{where}; choose a "
            "directory this process can write to (--db sqlite:///<path> or "
            "FLOWTEL_DATABASE_URL)"
        )
        self.errno = cause.errno
        self.path = path
