"""What a database driver's exception means: the rows refused, or the database unreachable.

:func:`refused` tells a database that refuses the data itself (a value it cannot store, a
constraint) from one that is unreachable, locked or missing its tables: only the former is
worth isolating row by row; the latter is an outage to wait out. :func:`first_line` gives an
exception's message as one short line for logs and counters.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from instrumentation.errors import FlowtelError

__all__ = ["first_line", "refused"]


def refused(exc: Exception) -> bool:
    """Whether *exc* is the database refusing the rows themselves, not an outage."""
    if isinstance(exc, sa_exc.DBAPIError):
        return isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)) and not (
            exc.connection_invalidated
        )
    if isinstance(exc, sa_exc.StatementError):
        return isinstance(exc.orig, (ValueError, TypeError))  # bind processing
    if isinstance(exc, FlowtelError):
        return False  # ours: a schema that does not match, an unsupported database ...
    return isinstance(exc, (ValueError, TypeError))  # e.g. UnicodeEncodeError in the driver


def first_line(exc: BaseException) -> str:
    """The first line of *exc*'s message, at most 300 characters."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
