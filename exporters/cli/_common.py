"""What every ``flowtel`` command shares: the ``--db`` option, database errors, times, output.

A database that cannot be opened or read becomes one line naming the URL with its password
masked and exit status 3, a ``--db`` that is not a database URL exit status 2 (see
:class:`~exporters.cli.exit_status.ExitStatus`), never a traceback. :class:`Duration`
(``--older-than``) takes the grammar of :mod:`exporters.ops.durations`; :class:`When`
(``--since``/``--until``) takes the same durations, counted back from now, or an ISO 8601 date
or time (UTC unless it says otherwise).
Tables go through a rich console as wide as the terminal, or ``COLUMNS`` (80 by default) when piped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from sqlalchemy import inspect
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import SQLAlchemyError

from exporters.cli.exit_status import ExitStatus
from exporters.db.check import SchemaReport, check_schema
from exporters.db.driver_errors import describe
from exporters.db.engine import (
    DatabaseURLError,
    display_url,
    make_engine,
    make_read_engine,
    resolve_database_url,
)
from exporters.db.json import dumps_text
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.errors import DatabaseFileError
from exporters.ops.durations import parse_duration, parse_when
from exporters.query.records import json_value
from exporters.query.store import HistoryStore

__all__ = [
    "MAX_LIMIT",
    "NOTHING_RECORDED",
    "BadDatabaseURL",
    "DatabaseUnavailable",
    "Duration",
    "Utf8Text",
    "When",
    "check_before_writing",
    "database_errors",
    "db_option",
    "echo_json",
    "history_store",
    "make_console",
    "parse_when",
]

F = TypeVar("F", bound=Callable[..., Any])

MAX_LIMIT = 2**31 - 1
"""The largest ``--limit`` every database accepts; a larger one is a usage error (status 2)."""

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
        type=Utf8Text(),
        metavar="URL",
        default=None,
        help="History database URL (default: $FLOWTEL_DATABASE_URL, else sqlite:///flowtel.db).",
    )(func)


def _reason(exc: BaseException, url: URL) -> str:
    return describe(exc, url)


@contextmanager
def database_errors(url: str | URL | None) -> Iterator[None]:
    """Turn database errors inside the block into exit status 3, database-URL errors into 2.

    A SQLite file that cannot be created (:class:`~exporters.errors.DatabaseFileError`) is a
    database unavailable too (3).
    """
    try:
        yield
    except DatabaseURLError as exc:
        raise BadDatabaseURL(str(exc)) from None
    except DatabaseFileError as exc:
        raise DatabaseUnavailable(str(exc)) from None
    except UnicodeError as exc:  # a host name the resolver refuses (a label over 63 characters)
        resolved = resolve_database_url(url)
        message = f"cannot use the history database {display_url(resolved)}"
        raise DatabaseUnavailable(f"{message}: {_reason(exc, resolved)}") from None
    except SQLAlchemyError as exc:
        resolved = resolve_database_url(url)
        message = f"cannot use the history database {display_url(resolved)}"
        raise DatabaseUnavailable(f"{message}: {_reason(exc, resolved)}") from None


def _missing_sqlite_file(url: URL) -> bool:
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return False
    return not database.startswith("file:") and not Path(database).exists()


def _unreadable(engine: Engine) -> str | None:
    """Why *engine*'s database holds no flowtel history this version can read, or ``None``."""
    inspector = inspect(engine)
    tables = [workflow_history, workflow_step_history]
    present = [table for table in tables if inspector.has_table(table.name)]
    if not present:
        return "it has no flowtel history tables"
    for table in tables:
        live = {c["name"] for c in inspector.get_columns(table.name)} if table in present else set()
        if not live.issuperset(table.c.keys()):
            return f"its {table.name} table has not been upgraded to this version of flowtel"
    return None


def check_before_writing(url: URL, *, empty_ok: bool = False) -> SchemaReport:
    """Check the schema on a read-only connection before a command writes to *url*.

    The writable engine switches a SQLite file to WAL on its first connection, so a command
    that writes looks first, read-only, and leaves a database it refuses exactly as it was
    (a SQLite file byte-identical, no ``-wal`` or ``-shm`` beside it).

    Args:
        url: the history database.
        empty_ok: return the report of a database without flowtel's tables instead of refusing.

    Raises:
        DatabaseUnavailable: no flowtel tables (unless *empty_ok*), or tables this flowtel
            cannot write to; one line naming ``flowtel db upgrade --db URL`` (status 3).
    """
    shown = display_url(url)
    engine = make_read_engine(url)
    try:
        report = check_schema(engine)
    finally:
        engine.dispose()
    if report.empty and empty_ok:
        return report
    if report.empty:
        reason = "it has no flowtel history tables"
    elif report.blocking:
        first, more = report.blocking[0], len(report.blocking) - 1
        reason = (
            "its tables have not been upgraded to this version of flowtel "
            f"({first}{f', and {more} more' if more else ''})"
        )
    else:
        return report
    raise DatabaseUnavailable(
        f"refusing to write to the history database {shown}: {reason}; nothing was changed; "
        f"run: flowtel db upgrade --db {shown}"
    )


@contextmanager
def history_store(db: str | None, *, writable: bool = False) -> Iterator[HistoryStore]:
    """Open the store for a command; the database is opened read-only unless *writable*.

    A missing SQLite file (never created), a database without flowtel's tables and tables not
    upgraded yet each exit with status 3 and one line naming the fix (``flowtel db upgrade``);
    so do database errors inside the block. A *writable* store is opened only after
    :func:`check_before_writing` found the schema usable, so a refused database is untouched.
    """
    with database_errors(db):
        url = resolve_database_url(db)
        shown = display_url(url)
        if _missing_sqlite_file(url):
            raise DatabaseUnavailable(
                f"cannot read the history database {shown}: the file does not exist; "
                f"record some runs, or create it with: flowtel db upgrade --db {shown}"
            )
        if writable:
            check_before_writing(url)
        store = HistoryStore(make_engine(url)) if writable else HistoryStore.from_url(url)
        try:
            reason = _unreadable(store.engine)
            if reason is not None:
                raise DatabaseUnavailable(
                    f"cannot read the history database {shown}: {reason}; "
                    f"run: flowtel db upgrade --db {shown}"
                )
            yield store
        finally:
            store.close()


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


if TYPE_CHECKING:
    _StrParam = click.ParamType[str]
else:
    _StrParam = click.ParamType


class Utf8Text(_StrParam):
    """A click parameter for text: refuses bytes that are not UTF-8 and NUL characters.

    A shell passes ``$'\\xff\\xfe'`` as bytes Python cannot encode again; rejected here, it is
    a one-line usage error (status 2) instead of a traceback from the database driver.
    """

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """Return *value* as text or fail naming what is wrong with it."""
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            self.fail(f"'{shown}' is not valid UTF-8 text", param, ctx)
        if "\x00" in text:
            self.fail(f"{text!r} contains a NUL character", param, ctx)
        return text


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
    """A rich console on stdout (or stderr): the terminal's width, else ``COLUMNS``, else 80."""
    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def echo_json(data: Any) -> None:
    """Print *data* as indented JSON on stdout, every datetime in the one ISO 8601 UTC form.

    Datetimes, records and dataclasses go through :func:`~exporters.query.records.json_value`,
    so every command's ``--json`` writes ``2026-11-01T12:00:03.250000Z``.
    """
    click.echo(dumps_text(json_value(data), indent=2))
