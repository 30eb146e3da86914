"""What a database driver's exception means: the rows refused, or the database unreachable.

:func:`refused` tells a database that refuses the data itself (a value it cannot store, a
constraint) from one that is unreachable, locked or missing its tables: only the former is
worth isolating row by row; the latter is an outage to wait out. :func:`first_line` gives an
exception's message as one short line; :func:`describe` is THE way flowtel shows an exception
to a person or a counter: ``Type: first line``, bounded, with credentials masked.
"""

from __future__ import annotations

from sqlalchemy import URL
from sqlalchemy import exc as sa_exc

from instrumentation.errors import FlowtelError
from instrumentation.redaction import mask_url_credentials

__all__ = ["describe", "first_line", "refused"]

MAX_LINE = 300
"""The most characters of an exception's message :func:`describe` keeps."""


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
    """The first line of *exc*'s message, at most :data:`MAX_LINE` characters."""
    text = str(exc).strip().splitlines()
    return text[0][:MAX_LINE] if text else ""


def describe(exc: BaseException, url: URL | None = None) -> str:
    """*exc* as one masked line: ``Type: first line of the message``.

    A driver error wrapped by SQLAlchemy is shown as the driver's own exception (its first line
    names the cause; SQLAlchemy's adds ``[SQL: ...]`` lines and a link). The password of *url*
    and the credentials of any URL in the text are replaced by ``***``.
    """
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    text = f"{type(cause).__name__}: {first_line(cause)}".rstrip(": ")
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return mask_url_credentials(text)
