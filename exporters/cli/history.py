"""``flowtel runs`` and ``flowtel show``: read the recorded history back.

``runs`` lists runs newest first with filters (status, workflow, workflow id, server, time
window) as a table or, with ``--json``, as a JSON array with stable keys. ``show`` resolves a run
id, a unique run-id prefix or a workflow id (its latest run) and prints the header, the redacted
context, the steps with a waterfall, and for a failed run the failing step's error, stack trace
and log lines. An unknown run exits with status 1 and suggests the closest id.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import click
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from instrumentation import RunStatus

from ..queries import AmbiguousRunError, RunDetail, RunNotFoundError, RunSummary, StepRecord
from ._common import When, db_option, echo_json, history_store, make_console
from ._format import fmt_duration, fmt_time, run_duration_ms, status_text, text, truncate

__all__ = ["runs", "show"]

_WATERFALL_WIDTH = 24
_STEP_FAILED = re.compile(r"^step '[^']*' failed: ")  # the step is in its own column
_NOTHING_RECORDED = "No runs recorded yet. Record some with: flowtel demo"
_RUN_COLUMNS = (
    "run", "workflow", "workflow id", "status", "started (UTC)", "duration", "steps", "step"
)  # fmt: skip
_NEVER_SQUEEZED = ("run", "status", "steps")  # keep their width on a narrow terminal


@click.command()
@db_option
@click.option(
    "--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs with this status."
)
@click.option("--workflow", metavar="NAME", help="Only runs of this workflow name.")
@click.option("--workflow-id", metavar="ID", help="Only runs of this logical workflow id.")
@click.option("--server", "server_id", metavar="ID", help="Only runs about this server id.")
@click.option("--since", type=When(), help="Started at or after: 30m, 24h, 7d or 2026-11-01.")
@click.option("--until", type=When(), help="Started before: 30m, 24h, 7d or 2026-11-01.")
@click.option(
    "--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Most runs to list."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def runs(
    db: str | None,
    status: str | None,
    workflow: str | None,
    workflow_id: str | None,
    server_id: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded workflow runs, newest first."""
    filters: dict[str, Any] = {
        "status": status,
        "workflow": workflow,
        "workflow_id": workflow_id,
        "server_id": server_id,
        "since": since,
        "until": until,
    }
    with history_store(db) as store:
        found = [] if store is None else store.list_runs(**filters, limit=limit)
    if as_json:
        echo_json([run.to_json() for run in found])
        return
    console = make_console()
    if not found:
        filtered = any(value is not None for value in filters.values())
        console.print(
            "No runs match these filters." if filtered and store is not None else _NOTHING_RECORDED
        )
        return
    console.print(_runs_table(found, console.width))
    if len(found) == limit:
        console.print(f"Showing the newest {limit}; use --limit for more.", style="dim")


def _run_cells(run: RunSummary) -> list[Text]:
    ms, still_open = run_duration_ms(run.duration_ms, run.started_at)
    return [
        text(run.run_id[:8]),
        text(run.workflow_name),
        text(run.workflow_id),
        status_text(run.status),
        text(fmt_time(run.started_at)),
        text(fmt_duration(ms) + ("…" if still_open else "")),
        text(f"{run.steps_completed}/{run.total_steps}"),
        text(run.current_step),
    ]


def _runs_table(found: list[RunSummary], width: int) -> Table:
    """The runs as a table whose error column takes whatever width the others leave."""
    rows = [_run_cells(run) for run in found]
    widths = [max(len(h), *(r[i].cell_len for r in rows)) for i, h in enumerate(_RUN_COLUMNS)]
    error_width = max(20, width - sum(widths) - 3 * (len(widths) + 1) - 1)  # padding, edges
    table = Table(box=box.SIMPLE_HEAD, title=f"{len(found)} runs, newest first")
    for header, column_width in zip(_RUN_COLUMNS, widths, strict=True):
        table.add_column(
            header,
            justify="right" if header in ("duration", "steps") else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width=column_width if header in _NEVER_SQUEEZED else None,
        )
    table.add_column("error", no_wrap=True, overflow="ellipsis")
    for run, row in zip(found, rows, strict=True):
        error = _STEP_FAILED.sub("", run.error_message or "")
        table.add_row(*row, text(truncate(error, error_width), style="red"))
    return table


@click.command()
@click.argument("run_ref", metavar="RUN")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the run and its steps as JSON.")
def show(run_ref: str, db: str | None, as_json: bool) -> None:
    """Show one run: RUN is a run id, a unique run-id prefix or a workflow id (latest run)."""
    with history_store(db) as store:
        if store is None:
            raise click.ClickException(f"no run found for {run_ref!r}: {_NOTHING_RECORDED}")
        try:
            detail = store.get_run(run_ref)
        except (RunNotFoundError, AmbiguousRunError) as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(detail.to_json())
        return
    console = make_console()
    _print_header(console, detail)
    if detail.context:
        context = Table.grid(padding=(0, 2))
        for key, value in detail.context.items():
            context.add_row(text(key, "bold"), text(value))
        console.print(Group(Text("\nContext", style="bold underline"), context))
    if detail.steps:
        console.print(Text("\nSteps", style="bold underline"))
        console.print(_steps_table(detail))
    if detail.status == "failed":
        _print_failure(console, detail)


def _print_header(console: Console, detail: RunDetail) -> None:
    ms, still_open = run_duration_ms(detail.duration_ms, detail.started_at)
    trace = detail.metadata.get("trace")
    trace_url = (trace.get("url") or trace.get("link")) if isinstance(trace, dict) else None
    workflow_id = detail.workflow_id
    if detail.other_runs:
        plural = "s" if detail.other_runs > 1 else ""
        others = f"flowtel runs --workflow-id {detail.workflow_id}"
        workflow_id += f"  ({detail.other_runs} other run{plural}: {others})"
    rows: list[tuple[str, Text]] = [
        ("run id", text(detail.run_id)),
        ("workflow id", text(workflow_id)),
        ("status", status_text(detail.status)),
        ("progress", text(f"{detail.steps_completed}/{detail.total_steps} steps")),
        ("current step", text(detail.current_step)),
        ("started", text(f"{fmt_time(detail.started_at)} UTC" if detail.started_at else "")),
        ("duration", text(fmt_duration(ms) + (" so far" if still_open else ""))),
        ("host / pid", text(f"{detail.host or '?'} / {detail.pid or '?'}")),
        ("service", text(detail.service_name)),
        ("trace id", text(detail.trace_id)),
        ("trace", text(trace_url)),
        ("parent run", text(detail.parent_run_id)),
    ]
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        if value.plain:
            grid.add_row(text(label, "bold"), value)
    title = Text(detail.workflow_name or detail.workflow_id, style="bold")
    console.print(Group(title, grid))


def _waterfall(step: StepRecord, start: dt.datetime | None, total_ms: float) -> Text:
    if start is None or step.started_at is None or total_ms <= 0:
        return Text("")
    offset_ms = (step.started_at - start).total_seconds() * 1000
    offset = min(_WATERFALL_WIDTH - 1, max(0, int(offset_ms / total_ms * _WATERFALL_WIDTH)))
    length = max(1, round((step.duration_ms or 0) / total_ms * _WATERFALL_WIDTH))
    length = min(length, _WATERFALL_WIDTH - offset)
    bar = Text(" " * offset)
    bar.append("█" * length, style=status_text(step.status).style)
    return bar


def _steps_table(detail: RunDetail) -> Table:
    ends = [s.completed_at for s in detail.steps if s.completed_at is not None]
    end = detail.completed_at or (max(ends) if ends else None)
    start = detail.started_at
    total_ms = (end - start).total_seconds() * 1000 if start and end else 0.0
    table = Table()
    table.add_column("#", justify="right")
    table.add_column("step", no_wrap=True)
    table.add_column("try", justify="right")
    table.add_column("status", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("timeline", no_wrap=True, min_width=_WATERFALL_WIDTH)
    table.add_column("message", no_wrap=True, overflow="ellipsis")
    for step in detail.steps:
        table.add_row(
            text(step.step_index),
            text(step.step_name),
            text(step.attempt),
            status_text(step.status),
            text(fmt_duration(step.duration_ms)),
            _waterfall(step, start, total_ms),
            text(truncate(step.message, 80)),
        )
    return table


def _print_failure(console: Console, detail: RunDetail) -> None:
    step = detail.failed_step
    console.print(Text("\nFailure", style="bold underline red"))
    if step is None:
        console.print(text(f"{detail.error_type or 'error'}: {detail.error_message or ''}"))
        return
    where = f"step {step.step_index} {step.step_name} (attempt {step.attempt})"
    console.print(text(where, "bold"))
    error = f"{step.error_type or detail.error_type or 'error'}: "
    console.print(text(error + (step.error_message or step.message or ""), "red"))
    if step.error_stacktrace:
        console.print(Text("\nStack trace", style="bold"))
        console.print(text(step.error_stacktrace.rstrip()))
    if isinstance(step.logs, list) and step.logs:
        console.print(Text("\nLog lines", style="bold"))
        for entry in step.logs:
            console.print(text(_log_line(entry)))


def _log_line(entry: Any) -> str:
    """``<at> <severity> <logger>: <message>`` from one stored log line."""
    if not isinstance(entry, dict):
        return str(entry)
    head = " ".join(str(entry[key]) for key in ("at", "severity", "logger") if entry.get(key))
    message = str(entry.get("message") or "")
    return f"{head}: {message}" if head else message
