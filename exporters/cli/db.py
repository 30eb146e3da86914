"""``flowtel db``: upgrade, inspect, check and prune the history database.

``upgrade`` applies flowtel's migrations (creating the tables, or adopting the old system's
``workflow_history`` in place after backing up a SQLite file); ``current`` prints the recorded
revision; ``check`` compares the live tables with the expected schema and exits 1 on any
difference; ``prune`` deletes old runs and their steps in batches, never running ones. Every
command takes ``--db URL``; ``current``, ``check`` and ``prune`` never create a missing SQLite
file. Database errors exit with status 3 and a one-line message with the password masked.
"""

from __future__ import annotations

import dataclasses
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
from sqlalchemy.engine import Engine

from exporters.cli._common import (
    Duration,
    check_before_writing,
    database_errors,
    db_option,
    echo_json,
    make_console,
)
from exporters.db import migrations
from exporters.db.check import SchemaDifference, SchemaReport, check_schema
from exporters.db.engine import display_url, make_engine, make_read_engine, resolve_database_url
from exporters.db.schema import metadata
from exporters.ops.policy import RetentionPolicy, apply_policy
from exporters.ops.retention import ACTIVE_STATUSES, prune
from exporters.ops.size import HistorySize, history_size
from instrumentation import RunStatus
from instrumentation.attributes import ACTIVE_RUN_STATUSES

__all__ = ["db", "prune_progress"]

_FINISHED = tuple(s.value for s in RunStatus if s.value not in ACTIVE_STATUSES)
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


def _keep_option(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> RetentionPolicy | None:
    try:
        return None if value is None else RetentionPolicy.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@db.command(name="prune")
@db_option
@click.option(
    "--older-than",
    type=Duration(),
    help="Minimum age of a run: a duration such as 90d, 12w or 36h.",
)
@click.option(
    "--keep",
    metavar="STATUS=AGE,...",
    callback=_keep_option,
    help="A retention policy instead of --older-than: completed=30d,failed=180d,cancelled=90d "
    "(statuses not named are kept; running and pending runs never go).",
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
    older_than: dt.timedelta | None,
    keep: RetentionPolicy | None,
    status: str | None,
    batch_size: int,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Delete runs that started before now minus --older-than, with their steps.

    With --keep, deletes each named status's runs older than its age instead. Deletes in
    batches of --batch-size runs, one transaction each, with a progress bar on a terminal.
    Running and pending runs are never deleted. Afterwards it says how to give the freed space
    back to the disk (SQLite: VACUUM).
    """
    if (older_than is None) == (keep is None):
        raise click.UsageError("give either --older-than AGE or --keep STATUS=AGE,...")
    if keep is not None and status is not None:
        raise click.UsageError("--status goes with --older-than; --keep names its statuses")
    if status in ACTIVE_RUN_STATUSES:
        raise click.BadParameter("running and pending runs are never pruned", param_hint="--status")
    shown = _missing_file(db)
    if shown is not None:
        click.echo(f"Nothing to prune: there is no database at {shown}.")
        return
    with database_errors(db):
        url = resolve_database_url(db)
        if check_before_writing(url, empty_ok=True).empty:  # looks read-only first
            click.echo(f"Nothing to prune: {display_url(url)} has no history tables.")
            return
        engine = make_engine(url)
        try:
            if keep is not None:
                _prune_by_policy(engine, keep, batch_size, dry_run, as_json)
                return
            assert older_than is not None
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


def _prune_by_policy(
    engine: Engine, policy: RetentionPolicy, batch_size: int, dry_run: bool, as_json: bool
) -> None:
    if dry_run or not _stderr_is_terminal():
        result = apply_policy(engine, policy, batch_size=batch_size, dry_run=dry_run)
    else:
        total = apply_policy(engine, policy, dry_run=True).runs_deleted
        with prune_progress(total) as advance:
            result = apply_policy(
                engine, policy, batch_size=batch_size, progress=lambda runs, _s: advance(runs)
            )
    if as_json:
        echo_json(result.to_json())
        return
    verb = "Would delete" if dry_run else "Deleted"
    for one in result.results:
        cutoff = one.cutoff.strftime("%Y-%m-%d %H:%M:%S UTC")
        click.echo(
            f"{verb} {one.runs_deleted} {one.status} runs and {one.steps_deleted} steps "
            f"that started before {cutoff}."
        )
    kept = ", ".join(s for s in _FINISHED if s not in dict(policy.keep))
    click.echo(
        f"{verb} {result.runs_deleted} runs and {result.steps_deleted} steps in all"
        + ("" if dry_run else f" ({result.batches} batches)")
        + (f"; {kept} runs are kept" if kept else "")
        + "; running and pending runs are never deleted."
    )
    if result.runs_deleted and not dry_run:
        click.echo(_reclaim_hint(engine.url.get_backend_name(), engine.url.database))


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


@db.command(name="size")
@db_option
@_json_option
def size_command(db: str | None, as_json: bool) -> None:
    """Print rows and bytes per history table and per status (what the history costs).

    Bytes are the database's own figure per table, indexes included; per status they are that
    figure shared out by each row's stored payload (see docs/operations.md). Reads every row's
    payload length: seconds per million runs.
    """
    shown = _missing_file(db)
    if shown is not None:
        click.echo(f"There is no database at {shown}.")
        return
    with database_errors(db):
        engine = make_read_engine(db)
        try:
            if not inspect(engine).has_table("workflow_history"):
                click.echo(f"{display_url(engine.url)} has no history tables.")
                return
            report = history_size(engine)
            report = dataclasses.replace(report, database=display_url(resolve_database_url(db)))
        finally:
            engine.dispose()
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(_size_text(report))


def _size_text(report: HistorySize) -> str:
    lines = [f"{report.database}: {_bytes(report.bytes)} in all"]
    width = max(len(s.status) for t in report.tables for s in t.statuses) if report.tables else 0
    width = max(width, len("workflow_step_history"))
    for table in report.tables:
        lines.append(f"{table.table:<{width + 2}} {table.rows:>12,} rows {_bytes(table.bytes):>10}")
        for status in table.statuses:
            per_row = f"{status.bytes / status.rows:,.0f} B/row" if status.rows else ""
            lines.append(
                f"  {status.status:<{width}} {status.rows:>12,} rows {_bytes(status.bytes):>10}"
                f"  {per_row}"
            )
    return "\n".join(lines)


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"
