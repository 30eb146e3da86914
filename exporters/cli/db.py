"""``flowtel db``: upgrade, inspect, check and prune the history database.

``upgrade`` applies flowtel's migrations (creating the tables, or adopting the old system's
``workflow_history`` in place after backing up a SQLite file); ``current`` prints the recorded
revision; ``check`` compares the live tables with the expected schema and exits 1 on any
difference; ``prune`` deletes old runs and their steps in batches, never running ones. Every
command takes ``--db URL``; ``current``, ``check`` and ``prune`` never create a missing SQLite
file. Database errors exit with status 3 and a one-line message with the password masked.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import inspect

from exporters.cli._common import Duration, database_errors, db_option, echo_json, make_console
from exporters.db import migrations
from exporters.db.check import SchemaDifference, SchemaReport, check_schema
from exporters.db.engine import display_url, make_engine, make_read_engine, resolve_database_url
from exporters.db.schema import metadata
from exporters.ops.retention import prune
from instrumentation import RunStatus

__all__ = ["db", "prune_progress"]

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _missing_file(db_url: str | None) -> str | None:
    """The display URL of a SQLite database whose file does not exist, else ``None``."""
    url = resolve_database_url(db_url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or Path(database).exists():
        return None
    return display_url(url)


@click.group()
def db() -> None:
    """Manage the history database: migrations, schema check and retention."""


@db.command()
@db_option
@_json_option
def upgrade(db: str | None, as_json: bool) -> None:
    """Create or upgrade the history tables to the newest revision.

    An existing workflow_history table written by the old system is upgraded in place: every
    stored value is kept and each old row gets run_id legacy-<id>. A SQLite file is copied to
    <file>.bak-<timestamp> first.
    """
    with database_errors(db):
        engine = make_engine(db, io_timeout=None)  # a migration may rewrite a large table
        try:
            result = migrations.upgrade(engine)
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            engine.dispose()
    if as_json:
        echo_json(
            {
                "database": result.database,
                "from_revision": result.from_revision,
                "to_revision": result.to_revision,
                "backup": str(result.backup) if result.backup else None,
                "notes": list(result.notes),
            }
        )
        return
    if result.changed:
        before = result.from_revision or "none"
        click.echo(f"Upgraded {result.database} from {before} to {result.to_revision}.")
    else:
        click.echo(f"{result.database} is already at {result.to_revision}; nothing to do.")
    if result.backup:
        click.echo(f"Backup of the previous file: {result.backup}")
    for note in result.notes:
        click.echo(f"note: {note}")


@db.command()
@db_option
@_json_option
def current(db: str | None, as_json: bool) -> None:
    """Print the database's schema revision and the newest one."""
    head = migrations.HEAD_REVISION
    shown = _missing_file(db)
    revision: str | None = None
    if shown is None:
        with database_errors(db):
            engine = make_read_engine(db)
            try:
                revision = migrations.current_revision(engine)
                shown = display_url(engine.url)
            finally:
                engine.dispose()
    if as_json:
        echo_json(
            {"database": shown, "revision": revision, "head": head, "up_to_date": revision == head}
        )
        return
    state = "up to date" if revision == head else f"run: flowtel db upgrade --db {shown}"
    click.echo(f"{shown}: revision {revision or 'none'} (head {head}): {state}")


def _absent(shown: str) -> SchemaReport:
    missing = [SchemaDifference(name, "missing_table", name) for name in metadata.tables]
    return SchemaReport(shown, None, migrations.HEAD_REVISION, tuple(missing))


@db.command()
@db_option
@_json_option
def check(db: str | None, as_json: bool) -> None:
    """Compare the live tables with the expected schema; exit 1 if they differ.

    Lists every missing, extra or mistyped column, NOT NULL where flowtel writes NULL, and
    every missing index or unique constraint, in one report.
    """
    shown = _missing_file(db)
    if shown is not None:
        report = _absent(shown)
    else:
        with database_errors(db):
            engine = make_read_engine(db)
            try:
                report = check_schema(engine)
            finally:
                engine.dispose()
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(report.format())
        if not report.matches:
            click.echo(f"Fix it with: flowtel db upgrade --db {report.database}")
    if not report.matches:
        raise SystemExit(1)


@db.command(name="prune")
@db_option
@click.option(
    "--older-than",
    required=True,
    type=Duration(),
    help="Minimum age of a run: a duration such as 90d, 12w or 36h.",
)
@click.option(
    "--status",
    type=click.Choice([s.value for s in RunStatus]),
    help="Only runs with this status.",
)
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@_json_option
def prune_command(
    db: str | None,
    older_than: dt.timedelta,
    status: str | None,
    batch_size: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete runs that started before now minus --older-than, with their steps.

    Deletes in batches of --batch-size runs, one transaction each, with a progress bar on a
    terminal. Running and pending runs are never deleted. Afterwards it says how to give the
    freed space back to the disk (SQLite: VACUUM).
    """
    if status in ("running", "pending"):
        raise click.BadParameter("running and pending runs are never pruned", param_hint="--status")
    shown = _missing_file(db)
    if shown is not None:
        click.echo(f"Nothing to prune: there is no database at {shown}.")
        return
    with database_errors(db):
        engine = make_engine(db)
        try:
            if not inspect(engine).has_table("workflow_history"):
                click.echo(f"Nothing to prune: {display_url(engine.url)} has no history tables.")
                return
            if dry_run or not _stderr_is_terminal():
                result = prune(engine, older_than, status, batch_size, dry_run=dry_run)
            else:
                total = prune(engine, older_than, status, dry_run=True).runs_deleted
                with prune_progress(total) as advance:
                    result = prune(
                        engine,
                        older_than,
                        status,
                        batch_size,
                        progress=lambda runs, _steps: advance(runs),
                    )
            backend = engine.url.get_backend_name()
            database = engine.url.database
        finally:
            engine.dispose()
    if as_json:
        echo_json(result)  # the cut-off in the one --json time form
        return
    verb = "Would delete" if result.dry_run else "Deleted"
    which = f"{result.status} runs" if result.status else "runs"
    cutoff = result.cutoff.strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(
        f"{verb} {result.runs_deleted} {which} and {result.steps_deleted} steps "
        f"that started before {cutoff}"
        + ("." if result.dry_run else f" ({result.batches} batches).")
    )
    if result.runs_deleted and not result.dry_run:
        click.echo(_reclaim_hint(backend, database))


def _reclaim_hint(backend: str, database: str | None) -> str:
    """How to give the space of deleted rows back to the file system, per database."""
    if backend == "sqlite":
        target = shlex.quote(database or "flowtel.db")
        return (
            "SQLite keeps the freed pages in the file for new rows; to shrink the file, stop the "
            f"writers and run: sqlite3 {target} 'VACUUM;' (it needs free disk space about the "
            "size of the file)."
        )
    if backend == "postgresql":
        return (
            "PostgreSQL reuses the space after autovacuum; VACUUM FULL workflow_history, "
            "workflow_step_history gives it back to the disk (it locks the tables)."
        )
    return (
        "MariaDB/MySQL reuses the space; OPTIMIZE TABLE workflow_history, "
        "workflow_step_history gives it back to the disk."
    )


def _stderr_is_terminal() -> bool:
    return make_console(stderr=True).is_terminal


@contextmanager
def prune_progress(
    total: int, *, force_terminal: bool | None = None
) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of deleted runs on stderr; yields ``advance(runs_deleted_so_far)``."""
    console = Console(stderr=True, force_terminal=force_terminal)
    columns = (
        TextColumn("pruning"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("pruning", total=total)

        def advance(done: int) -> None:
            bar.update(task, completed=done)

        yield advance
