"""What every ``flowtel`` command shares: the ``--db`` option, database errors, times, output.

A database that cannot be opened or read becomes one line naming the URL with its password
masked and exit status 2, never a traceback. ``--since``/``--until`` accept a duration back from
now (``30m``, ``24h``, ``7d``, ``2w``) or an ISO 8601 date or time (UTC unless it says
otherwise). Tables go through a rich console that is wide enough to read when piped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from sqlalchemy import inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from instrumentation.redaction import mask_url_credentials

from ..database import DatabaseURLError, display_url, resolve_database_url
from ..queries import HistoryStore

__all__ = [
    "NOTHING_RECORDED",
    "DatabaseUnavailable",
    "When",
    "database_errors",
    "db_option",
    "echo_json",
    "history_store",
    "make_console",
    "parse_when",
]

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_PIPED_WIDTH = 200

NOTHING_RECORDED = "No runs recorded yet. Record some with: flowtel demo"
"""What reading commands say about a database with no history in it."""


class DatabaseUnavailable(click.ClickException):
    """The history database cannot be opened or read (exit status 2)."""

    exit_code = 2


def db_option(func: F) -> F:
    """Add the ``--db URL`` option (passed to the command as ``db``)."""
    return click.option(
        "--db",
        metavar="URL",
        default=None,
        help="History database URL (default: $FLOWTEL_DATABASE_URL, else sqlite:///flowtel.db).",
    )(func)


def _reason(exc: BaseException, url: URL) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    text = f"{type(cause).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if url.password:
        text = text.replace(str(url.password), "***")
    return mask_url_credentials(text)


@contextmanager
def database_errors(url: str | URL | None) -> Iterator[None]:
    """Turn database and database-URL errors raised inside the block into exit status 2."""
    try:
        yield
    except DatabaseURLError as exc:
        raise DatabaseUnavailable(str(exc)) from None
    except SQLAlchemyError as exc:
        resolved = resolve_database_url(url)
        message = f"cannot use the history database {display_url(resolved)}"
        raise DatabaseUnavailable(f"{message}: {_reason(exc, resolved)}") from None


def _missing_sqlite_file(url: URL) -> bool:
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    return not database.startswith("file:") and not Path(database).exists()


@contextmanager
def history_store(db: str | None) -> Iterator[HistoryStore | None]:
    """Open the store for a reading command; ``None`` when nothing was ever recorded there.

    A SQLite file that does not exist is not created, and a database without flowtel's
    tables yields ``None`` too. Database errors inside the block exit with status 2.
    """
    with database_errors(db):
        url = resolve_database_url(db)
        if _missing_sqlite_file(url):
            yield None
            return
        store = HistoryStore.from_url(url)
        try:
            yield store if inspect(store.engine).has_table("workflow_history") else None
        finally:
            store.close()


def parse_when(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """Parse ``30m``/``24h``/``7d``/``2w`` (before *now*) or an ISO 8601 date/time (UTC default).

    Raises:
        ValueError: *text* is neither.
    """
    now = now or dt.datetime.now(dt.UTC)
    match = _DURATION.fullmatch(text.strip().lower())
    if match:
        return now - dt.timedelta(**{_UNITS[match[2]]: int(match[1])})
    parsed = dt.datetime.fromisoformat(text.strip())
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


if TYPE_CHECKING:
    _DatetimeParam = click.ParamType[dt.datetime]  # generic only in newer click releases
else:
    _DatetimeParam = click.ParamType


class When(_DatetimeParam):
    """A click parameter for :func:`parse_when`."""

    name = "when"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        """Return *value* as a timezone-aware datetime or fail with an example."""
        if isinstance(value, dt.datetime):
            return value
        try:
            return parse_when(str(value))
        except ValueError:
            self.fail(
                f"{value!r} is not a time: give a duration back from now such as 30m, 24h or "
                "7d, or a date such as 2026-11-01 (UTC unless an offset is given)",
                param,
                ctx,
            )


def make_console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); 200 columns when piped and COLUMNS is unset."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPED_WIDTH
    return console


def echo_json(data: Any) -> None:
    """Print *data* as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
