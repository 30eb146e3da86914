"""``flowtel demo``: record simulated provisioning runs, then say where to look.

It configures flowtel on the chosen database (the embedded SQLite file by default), runs
:func:`~exporters.cli.demo_workflow.run_demo` with a progress bar on stderr (plain lines when stderr
is not a terminal), flushes and shuts flowtel down so every row is written, and prints a summary
with the commands to run next, or the same summary as JSON with ``--json``. The rows' outcome
(``flushed``) and the trace export's (``traces``: spans exported and failed) are reported
apart: an unreachable collector does not make the history incomplete, nor the reverse.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from exporters.cli._common import database_errors, db_option, echo_json, make_console
from exporters.cli._format import fmt_duration
from exporters.cli.demo_workflow import STEPS, WORKFLOW_NAME, DemoSummary, RunOutcome, run_demo
from exporters.configure import Flowtel, configure
from exporters.db.engine import display_url, make_engine
from instrumentation.attributes import RunStatus
from instrumentation.redaction import mask_url_credentials

__all__ = ["db_argument", "demo", "duration_notice"]

_SERVICE_NAME = "flowtel-demo"
_FLUSH_TIMEOUT_MS = 30_000
_ANNOUNCE_AFTER_S = 10.0  # a demo expected to take longer says so and how to make it quick
_OTLP_LOGGER = "opentelemetry.exporter.otlp"  # the gRPC and HTTP exporters log under it


@contextmanager
def _progress(runs: int) -> Iterator[Callable[[RunOutcome], None]]:
    """Yield the ``on_progress`` callback: a rich bar on a terminal, else a line per 10 %."""
    console = make_console(stderr=True)
    failed = 0
    if console.is_terminal:
        columns = (
            TextColumn("{task.description:<24}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("provisioning", total=runs, failed=0)

            def advance(outcome: RunOutcome) -> None:
                nonlocal failed
                failed += outcome.status != RunStatus.COMPLETED
                label = outcome.workflow_id if outcome.index < runs else "done"
                bar.update(task, advance=1, failed=failed, description=label)

            yield advance
        return
    step = max(1, runs // 10)

    def report(outcome: RunOutcome) -> None:
        nonlocal failed
        failed += outcome.status != RunStatus.COMPLETED
        if outcome.index % step == 0 or outcome.index == runs:
            click.echo(f"recorded {outcome.index}/{runs} runs ({failed} failed)", err=True)

    yield report


def db_argument(db: str | None) -> str:
    """The ``--db`` part of the hints, ready to paste into a shell.

    The URL as given, quoted for the shell; a URL with a password is neither masked (the hint
    would not work) nor echoed to the terminal: the hint names ``$FLOWTEL_DATABASE_URL``.
    """
    if db is None:
        return ""
    try:
        has_password = make_url(db).password is not None
    except (ArgumentError, ValueError):
        has_password = False
    if has_password:
        return ' --db "$FLOWTEL_DATABASE_URL"'
    return f" --db {shlex.quote(db)}"


def duration_notice(runs: int, step_delay: float) -> str | None:
    """What a long demo will take, with the way to make it quick; ``None`` for a short one."""
    seconds = runs * step_delay * sum(spec.weight for spec in STEPS)
    if seconds < _ANNOUNCE_AFTER_S:
        return None
    return (
        f"Recording {runs} runs takes about {fmt_duration(seconds * 1000)} "
        f"(--step-delay {step_delay:g}s per step); add --step-delay 0 to record them "
        "in seconds."
    )


class _ExportFailures(logging.Handler):
    """Counts the OTLP exporters' error records instead of letting them reach the terminal."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if self.first is None:
            self.first = record.getMessage().splitlines()[0][:200]


@contextmanager
def _quiet_otlp_exporters() -> Iterator[_ExportFailures]:
    """Route the OTLP exporters' log records to a counter while the demo runs."""
    logger = logging.getLogger(_OTLP_LOGGER)
    failures = _ExportFailures()
    propagate = logger.propagate
    logger.addHandler(failures)
    logger.propagate = False
    try:
        yield failures
    finally:
        logger.removeHandler(failures)
        logger.propagate = propagate


def _report_export_failures(failures: _ExportFailures) -> None:
    if failures.count:
        plural = "" if failures.count == 1 else "s"
        click.echo(
            f"OTLP export failed {failures.count} time{plural} (first: "
            f"{mask_url_credentials(failures.first or '')}); every run is in the history "
            "database. Is the collector running? (flowtel exports to it when "
            "OTEL_EXPORTER_OTLP_ENDPOINT is set)",
            err=True,
        )


@click.command()
@click.option(
    "--runs", default=20, show_default=True, type=click.IntRange(min=1), help="Runs to record."
)
@click.option("--seed", default=7, show_default=True, help="Same seed, same outcomes.")
@click.option(
    "--failure-rate",
    default=0.15,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Probability that a run fails.",
)
@click.option(
    "--step-delay",
    metavar="SECONDS",
    default=0.005,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Simulated work per step.",
)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(
    runs: int, seed: int, failure_rate: float, step_delay: float, db: str | None, as_json: bool
) -> None:
    """Record simulated 23-step server-provisioning runs, some of them failing."""
    notice = duration_notice(runs, step_delay)
    if notice is not None:
        click.echo(notice, err=True)
    with database_errors(db):
        probe = make_engine(db)  # fail fast (exit 2) rather than simulate into the void
        try:
            probe.connect().close()
        finally:
            probe.dispose()
        handle = configure(database_url=db, service_name=_SERVICE_NAME)
    # The failing steps' warnings are recorded on their step rows (flowtel show prints them);
    # keep them off the terminal, where they would tear the progress bar.
    logging.getLogger("flowtel.demo").propagate = False
    with _quiet_otlp_exporters() as failures:
        summary, flushed = _record(handle, runs, seed, failure_rate, step_delay)
    _report_export_failures(failures)
    traces = handle.trace_export  # after shutdown: every span has had its answer
    shown = display_url(handle.database_url)
    if as_json:
        echo_json({"database": shown, "flushed": flushed, "traces": traces, **summary.to_json()})
        return
    _print_summary(summary, shown, db, flushed)
    if traces["spans_failed"]:
        make_console().print(
            f"Warning: {traces['spans_failed']} of "
            f"{traces['spans_failed'] + traces['spans_exported']} spans could not be exported "
            "to the OTLP endpoint: the traces are incomplete (the history rows are not).",
            style="yellow",
            markup=False,
        )


def _record(
    handle: Flowtel, runs: int, seed: int, failure_rate: float, step_delay: float
) -> tuple[DemoSummary, bool]:
    """Run the demo workflows with a progress bar, then flush and shut flowtel down."""
    try:
        with _progress(runs) as on_progress:
            summary = run_demo(
                runs=runs,
                seed=seed,
                failure_rate=failure_rate,
                step_delay=step_delay,
                on_progress=on_progress,
                tracer_provider=handle.tracer_provider,
            )
        handle.force_flush(_FLUSH_TIMEOUT_MS)
        flushed = handle.processor.force_flush(_FLUSH_TIMEOUT_MS)  # the rows, on their own
    finally:
        handle.shutdown(_FLUSH_TIMEOUT_MS)
    return summary, flushed


def _print_summary(summary: DemoSummary, shown: str, db: str | None, flushed: bool) -> None:
    console = make_console()
    console.print(
        f"Recorded {summary.runs} {WORKFLOW_NAME} runs in {summary.elapsed_s:.1f}s into {shown}",
        markup=False,
    )
    console.print(f"  completed  {summary.completed}", style="green", markup=False)
    reasons = ", ".join(f"{name} {count}" for name, count in sorted(summary.failures.items()))
    failed = f"  failed     {summary.failed}" + (f"  ({reasons})" if reasons else "")
    console.print(failed, style="red" if summary.failed else "", markup=False)
    if not flushed:
        console.print(
            "Warning: not every row reached the database yet; flowtel keeps the rest and "
            "writes them when it can.",
            style="yellow",
            markup=False,
        )
    db_arg = db_argument(db)
    console.print("\nNext:", style="bold")
    if "$FLOWTEL_DATABASE_URL" in db_arg:
        console.print("  (with FLOWTEL_DATABASE_URL set to the URL you gave --db)", style="dim")
    if summary.failed_run_ids:
        console.print(f"  flowtel runs --status failed{db_arg}", markup=False, soft_wrap=True)
        console.print(
            f"  flowtel show {summary.failed_run_ids[0]}{db_arg}", markup=False, soft_wrap=True
        )
    else:
        console.print(f"  flowtel runs{db_arg}", markup=False, soft_wrap=True)
    console.print(
        f"  flowtel serve{db_arg}   # then open http://127.0.0.1:8765/",
        markup=False,
        soft_wrap=True,
    )
