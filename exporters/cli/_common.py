"""What every ``flowtel`` command shares: the ``--db`` option, database errors, times, output.

A database that cannot be opened or read becomes one line naming the URL with its password
masked and exit status 3, a ``--db`` that is not a database URL exit status 2 (see
:class:`~exporters.cli.exit_status.ExitStatus`), never a traceback. :class:`Duration`
(``--older-than``) takes the grammar of :mod:`exporters.ops.durations`; :class:`When`
(``--since``/``--until``) takes the same durations, counted back from now, or an ISO 8601 date
or time (UTC unless it says otherwise).
Tables go through a rich console that is wide enough to read when piped.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from sqlalchemy import inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from exporters.cli.exit_status import ExitStatus
from exporters.db.driver_errors import describe
from exporters.db.engine import DatabaseURLError, display_url, resolve_database_url
from exporters.db.json import dumps_text
from exporters.ops.durations import DURATION_FORMS, parse_duration
from exporters.query.store import HistoryStore

__all__ = [
    "NOTHING_RECORDED",
    "BadDatabaseURL",
    "DatabaseUnavailable",
    "Duration",
    "When",
    "database_errors",
    "db_option",
    "echo_json",
    "history_store",
    "make_console",
    "parse_when",
]

F = TypeVar("F", bound=Callable[..., Any])

_PIPED_WIDTH = 200

NOTHING_RECORDED = "No runs recorded yet. Record some with: flowtel demo"
"""What reading commands say about a database with no history in it."""


class DatabaseUnavailable(click.ClickException):
    """The history database cannot be opened or read (exit status 3)."""

    exit_code = int(ExitStatus.DATABASE_UNAVAILABLE)


class BadDatabaseURL(click.ClickException):
    """``--db`` (or ``$FLOWTEL_DATABASE_URL``) is not a database URL flowtel can use (status 2)."""

    exit_code = int(ExitStatus.USAGE)


def db_option(func: F) -> F:
    """Add the ``--db URL`` option (passed to the command as ``db``)."""
    return click.option(
        "--db",
        metavar="URL",
        default=None,
        help="History database URL (default: $FLOWTEL_DATABASE_URL, else sqlite:///flowtel.db).",
    )(func)


def _reason(exc: BaseException, url: URL) -> str:
    return describe(exc, url)


@contextmanager
def database_errors(url: str | URL | None) -> Iterator[None]:
    """Turn database errors inside the block into exit status 3, database-URL errors into 2."""
    try:
        yield
    except DatabaseURLError as exc:
        raise BadDatabaseURL(str(exc)) from None
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
    tables yields ``None`` too. Database errors inside the block exit with status 3.
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
    """Parse an ISO 8601 date or time (UTC unless it has an offset) or a duration before *now*.

    Durations follow :func:`exporters.ops.durations.parse_duration` (``90``, ``30m``, ``1.5h``,
    ``7d``, ``2w``). An ISO form wins where both could apply: ``20261101`` is 1 November 2026,
    not 20,261,101 seconds.

    Raises:
        ValueError: *text* is neither, or a duration longer than
            :data:`~exporters.ops.durations.MAX_DURATION`; the message says what is accepted.
    """
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        pass
    else:
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
    try:
        return (now or dt.datetime.now(dt.UTC)) - parse_duration(text)
    except ValueError as exc:
        if str(exc).startswith(f"{text!r} is too long"):
            raise
        raise ValueError(
            f"{text!r} is not a time: give an ISO 8601 date or time such as 2026-11-01 or "
            "2026-11-01T08:00+02:00 (UTC unless it has an offset), or a duration back from "
            f"now: {DURATION_FORMS}"
        ) from None


if TYPE_CHECKING:  # click.ParamType is generic only in newer click releases
    _DatetimeParam = click.ParamType[dt.datetime]
    _TimedeltaParam = click.ParamType[dt.timedelta]
else:
    _DatetimeParam = _TimedeltaParam = click.ParamType


class When(_DatetimeParam):
    """A click parameter for :func:`parse_when` (``--since``, ``--until``)."""

    name = "when"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.datetime:
        """Return *value* as a timezone-aware datetime or fail saying what is accepted."""
        if isinstance(value, dt.datetime):
            return value
        try:
            return parse_when(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Duration(_TimedeltaParam):
    """A click parameter for :func:`exporters.ops.durations.parse_duration` (``--older-than``)."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> dt.timedelta:
        """Return *value* as a positive timedelta or fail saying what is accepted."""
        if isinstance(value, dt.timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def make_console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); 200 columns when piped and COLUMNS is unset."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPED_WIDTH
    return console


def echo_json(data: Any) -> None:
    """Print *data* as indented JSON on stdout."""
    click.echo(dumps_text(data, indent=2))
