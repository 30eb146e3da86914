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
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from exporters.cli._common import database_errors, db_option, echo_json, make_console
from exporters.cli.demo_workflow import WORKFLOW_NAME, DemoSummary, RunOutcome, run_demo
from exporters.configure import configure
from exporters.db.engine import display_url, make_engine

__all__ = ["demo"]

_SERVICE_NAME = "flowtel-demo"
_FLUSH_TIMEOUT_MS = 30_000


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
                failed += outcome.status != "completed"
                label = outcome.workflow_id if outcome.index < runs else "done"
                bar.update(task, advance=1, failed=failed, description=label)

            yield advance
        return
    step = max(1, runs // 10)

    def report(outcome: RunOutcome) -> None:
        nonlocal failed
        failed += outcome.status != "completed"
        if outcome.index % step == 0 or outcome.index == runs:
            click.echo(f"recorded {outcome.index}/{runs} runs ({failed} failed)", err=True)

    yield report


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
    traces = handle.trace_export  # after shutdown: every span has had its answer
    shown = display_url(handle.database_url)
    if as_json:
        echo_json({"database": shown, "flushed": flushed, "traces": traces, **summary.to_json()})
        return
    _print_summary(summary, shown, db is not None, flushed)
    if traces["spans_failed"]:
        make_console().print(
            f"Warning: {traces['spans_failed']} of "
            f"{traces['spans_failed'] + traces['spans_exported']} spans could not be exported "
            "to the OTLP endpoint: the traces are incomplete (the history rows are not).",
            style="yellow",
            markup=False,
        )


def _print_summary(summary: DemoSummary, shown: str, explicit_db: bool, flushed: bool) -> None:
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
    db_arg = f" --db {shown}" if explicit_db else ""
    console.print("\nNext:", style="bold")
    if summary.failed_run_ids:
        console.print(f"  flowtel runs --status failed{db_arg}", markup=False)
        console.print(f"  flowtel show {summary.failed_run_ids[0][:8]}{db_arg}", markup=False)
    else:
        console.print(f"  flowtel runs{db_arg}", markup=False)
