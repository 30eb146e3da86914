"""``flowtel spool status`` and ``flowtel spool replay``: the local spool of a history database.

Rows the database could not take wait in a spool directory of their own per database (see
:mod:`exporters.spool.files`). ``status`` reads that directory only, never the database: files,
records (row snapshots), bytes, and the age of the oldest file. ``replay`` writes the records to
the database now, oldest first, as a running writer and ``configure()`` also do; files still
being written by a live process are left for it. A database that cannot be reached ends with
one line (password masked) and exit status 3. Both take ``--json``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from exporters.cli._common import (
    DatabaseUnavailable,
    check_before_writing,
    database_errors,
    db_option,
    echo_json,
)
from exporters.db.engine import display_url, make_engine, resolve_database_url
from exporters.spool.files import spool_directory, spool_status
from exporters.spool.replay import replay_spool

__all__ = ["spool"]

_spool_dir_option = click.option(
    "--spool-dir",
    metavar="DIR",
    default=None,
    help="Root of the spools (default: $FLOWTEL_SPOOL_DIR, else beside the SQLite file, "
    "else ~/.cache/flowtel/spool).",
)


def _directory(db: str | None, spool_dir: str | None) -> tuple[str, Path]:
    with database_errors(db):
        url = resolve_database_url(db)
    directory = spool_directory(url, spool_dir)
    if directory is None:
        raise click.ClickException(f"{display_url(url)} is an in-memory database: no spool")
    return display_url(url), directory


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@click.group()
def spool() -> None:
    """Inspect or replay the rows spooled while the database was unreachable."""


@spool.command()
@db_option
@_spool_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def status(db: str | None, spool_dir: str | None, as_json: bool) -> None:
    """Files, records and the oldest file's age in the database's spool."""
    shown, directory = _directory(db, spool_dir)
    found = spool_status(directory)
    if as_json:
        echo_json({"database": shown, **found.to_json()})
        return
    click.echo(f"Spool of {shown}: {found.directory}")
    if not found.files:
        click.echo("Empty: every spooled row has been replayed.")
        return
    click.echo(
        f"{found.files} file(s), {found.records} record(s), {found.bytes / 1024:.1f} KiB; "
        f"oldest {_age(found.oldest_age_s)} old. Replay them with: flowtel spool replay"
    )


@spool.command()
@db_option
@_spool_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def replay(db: str | None, spool_dir: str | None, as_json: bool) -> None:
    """Write the spooled rows to the database now, oldest first."""
    shown, _ = _directory(db, spool_dir)
    with database_errors(db):
        url = resolve_database_url(db)
        with contextlib.suppress(SQLAlchemyError):  # unreachable: the replay says so below
            check_before_writing(url, empty_ok=True)  # looks read-only before it writes
        engine = make_engine(url)
    try:
        result = replay_spool(engine, spool_dir)
    finally:
        engine.dispose()
    if result.error is not None:
        raise DatabaseUnavailable(
            f"cannot replay the spool into {shown}: {result.error}; "
            f"{result.rows} row(s) replayed, {result.remaining_files} file(s) left"
        )
    if as_json:
        echo_json({"database": shown, **result.to_json()})
        return
    click.echo(
        f"Replayed {result.rows} row(s) from {result.files} file(s) into {shown} "
        f"in {result.seconds:.2f} s."
    )
    if result.remaining_files:
        click.echo(
            f"{result.remaining_files} file(s) left: still being written by a running process, "
            "which replays them itself once its database answers."
        )
    if result.records_skipped:
        click.echo(
            f"Skipped {result.records_skipped} damaged record(s) ({result.bytes_skipped} bytes), "
            f"kept for inspection in: {', '.join(result.damaged)}"
        )
