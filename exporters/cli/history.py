"""``flowtel runs`` and ``flowtel show``: read the recorded history back.

``runs`` lists runs newest first with filters (status, workflow, workflow id, server, device
type, time window) as a table or, with ``--json``, as a JSON array with stable keys. ``show``
resolves a run id, a unique run-id prefix or a workflow id (its latest run) and prints the
header with the trace link, the redacted context, every step attempt on a waterfall drawn to
scale, and for a failed run the failing step's error, stack trace and log lines. An unknown run
exits with status 1 and suggests the closest id.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from exporters.cli._columns import GAP, Column, Role, fitted_table, shorten_middle
from exporters.cli._common import (
    MAX_LIMIT,
    NOTHING_RECORDED,
    Utf8Text,
    When,
    db_option,
    echo_json,
    history_store,
    make_console,
)
from exporters.cli._format import (
    KEY_COLUMN,
    Waterfall,
    compact_table,
    fit_table,
    fmt_duration,
    fmt_started,
    fmt_time,
    log_line,
    run_duration_ms,
    status_text,
    text,
    truncate,
)
from exporters.db.json import dumps_text
from exporters.query.diff import BASELINE_RUNS, SLOW_MARK
from exporters.query.lookup import unique_prefixes
from exporters.query.store import (
    AmbiguousRunError,
    RunDetail,
    RunNotFoundError,
    RunSummary,
    StepRecord,
)
from exporters.query.where import parse_where
from instrumentation import RunStatus, StepStatus
from instrumentation.attributes import ACTIVE_RUN_STATUSES

__all__ = ["runs", "show"]

_STEP_FAILED = re.compile(r"^step '[^']*' failed: ")  # the step is in its own column
_DURATION_WIDTH = len("59m 59s…" + SLOW_MARK)
_STEP_MIN = 12  # a step name is never shortened (in its middle) below this
_MESSAGE_MIN = 12  # the message column keeps this much before the step name is shortened
_TIMELINE_MIN, _TIMELINE_MAX = 10, 50


def _where_option(
    ctx: click.Context, param: click.Parameter, items: tuple[str, ...]
) -> dict[str, str] | None:
    try:
        return parse_where(items) or None
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.command()
@db_option
@click.option(
    "--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs with this status."
)
@click.option(
    "--workflow", type=Utf8Text(), metavar="NAME", help="Only runs of this workflow name."
)
@click.option(
    "--workflow-id", type=Utf8Text(), metavar="ID", help="Only runs of this logical workflow id."
)
@click.option(
    "--server", "server_id", type=Utf8Text(), metavar="ID", help="Only runs about this server id."
)
@click.option(
    "--device-type", type=Utf8Text(), metavar="TYPE", help="Only runs about this device type."
)
@click.option("--since", type=When(), help="Started at or after: 30m, 24h, 7d or 2026-11-01.")
@click.option("--until", type=When(), help="Started before: 30m, 24h, 7d or 2026-11-01.")
@click.option(
    "--where",
    type=Utf8Text(),
    multiple=True,
    metavar="KEY=VALUE",
    callback=_where_option,
    help="Only runs whose context has KEY with this value, as text (repeatable; all must match).",
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, MAX_LIMIT),
    help="Most runs to list.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def runs(
    db: str | None,
    status: str | None,
    workflow: str | None,
    workflow_id: str | None,
    server_id: str | None,
    device_type: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    where: dict[str, str] | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded workflow runs, newest first.

    The step column is the step running now, or for a failed run the step that failed.
    """
    filters: dict[str, Any] = {
        "status": status,
        "workflow": workflow,
        "workflow_id": workflow_id,
        "server_id": server_id,
        "device_type": device_type,
        "since": since,
        "until": until,
        "where": where,
    }
    short: dict[str, str] = {}
    with history_store(db) as store:
        found = [] if store is None else store.list_runs(**filters, limit=limit)
        if store is not None and found and not as_json:
            with store.engine.connect() as conn:
                short = unique_prefixes(conn, [run.run_id for run in found])
    if as_json:
        echo_json([run.to_json() for run in found])
        return
    console = make_console()
    if not found:
        filtered = any(value is not None for value in filters.values())
        console.print(
            "No runs match these filters." if filtered and store is not None else NOTHING_RECORDED
        )
        return
    console.print(_runs_table(found, console, short))
    if len(found) == limit:
        console.print(f"Showing the newest {limit}; use --limit for more.", style="dim")


def _runs_table(found: list[RunSummary], console: Console, short: dict[str, str]) -> Table:
    """The runs, one line each, fitted by :func:`~exporters.cli._columns.fit_columns`.

    The run id, status, start, duration and progress keep their width; the workflow id, the
    step and the workflow name (a column only when several workflows are shown, else named in
    the title) are identifiers, shortened only in their middle and only once the error column
    is gone and the start times dropped the date of today's starts; the error ends in an
    ellipsis.
    """
    names = {run.workflow_name for run in found}
    one_name = next(iter(names)) if len(names) == 1 else None  # named once, in the title
    title = f"{len(found)} {one_name + ' ' if one_name else ''}runs, newest first (times in UTC)"
    starts = [run.started_at for run in found]
    failed = [run.status == RunStatus.FAILED for run in found]
    columns = [Column("run", [text(short[run.run_id]) for run in found])]
    if one_name is None:
        columns.append(
            Column("workflow", [text(run.workflow_name) for run in found], Role.ID, droppable=True)
        )
    columns += [
        Column("workflow id", [text(run.workflow_id) for run in found], Role.ID),
        Column("status", [status_text(run.status) for run in found]),
        Column(
            "started",
            [text(v) for v in fmt_started(starts, with_date=True)],
            compact=[text(v) for v in fmt_started(starts, with_date=False)],
        ),
        Column("duration", [text(_run_duration(run)) for run in found], justify="right"),
        Column(
            "steps",
            [text(f"{run.steps_completed}/{run.total_steps}") for run in found],
            justify="right",
        ),
        Column(
            "step",
            [text(run.current_step, "red" * bad) for run, bad in zip(found, failed, strict=True)],
            Role.ID,
        ),
        Column(
            "error",
            [text(_error_line(run), "red") for run in found],
            Role.TEXT,
        ),
    ]
    return fitted_table(columns, console.width, title=title, title_justify="left")


def _run_duration(run: RunSummary) -> str:
    ms, still_open = run_duration_ms(
        run.duration_ms, run.started_at, status=run.status, completed_at=run.completed_at
    )
    return fmt_duration(ms) + ("…" if still_open else "")


def _error_line(run: RunSummary) -> str:
    return _first_line(_STEP_FAILED.sub("", run.error_message or ""))


def _first_line(value: str | None) -> str:
    """The first non-blank line of *value* (a table cell holds one line)."""
    lines = (value or "").strip().splitlines()
    return lines[0] if lines else ""


@click.command()
@click.argument("run_ref", metavar="RUN", type=Utf8Text())
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the run and its steps as JSON.")
def show(run_ref: str, db: str | None, as_json: bool) -> None:
    """Show one run: RUN is a run id, a unique run-id prefix or a workflow id (latest run)."""
    with history_store(db) as store:
        if store is None:
            raise click.ClickException(f"no run found for {run_ref!r}: {NOTHING_RECORDED}")
        try:
            detail = store.get_run(run_ref)
        except (RunNotFoundError, AmbiguousRunError) as exc:
            raise click.ClickException(str(exc)) from None
        baselines = {} if as_json else store.step_baselines(detail.workflow_name)
    if as_json:
        echo_json(detail.to_json())
        return
    console = make_console()
    now = dt.datetime.now(dt.UTC)
    _print_header(console, detail, now)
    if detail.context:
        context = Table.grid(padding=(0, 2))
        for key, value in detail.context.items():
            context.add_row(text(key, "bold"), text(value))
        console.print(Group(Text("\nContext", style="bold underline"), context))
    if detail.steps:
        console.print(_steps_table(detail, now, console, baselines))
        if any(_slow(step, baselines) for step in detail.steps):
            console.print(
                f"{SLOW_MARK} slower than the step's p95 over this workflow's last completed "
                f"runs (up to {BASELINE_RUNS})",
                style="dim",
            )
    if detail.status == RunStatus.FAILED:
        _print_failure(console, detail)


def _print_header(console: Console, detail: RunDetail, now: dt.datetime) -> None:
    ms, still_open = run_duration_ms(
        detail.duration_ms,
        detail.started_at,
        now,
        status=detail.status,
        completed_at=detail.completed_at,
    )
    workflow_id = detail.workflow_id
    if detail.other_runs:
        plural = "s" if detail.other_runs > 1 else ""
        others = f"flowtel runs --workflow-id {detail.workflow_id}"
        workflow_id += f"  ({detail.other_runs} other run{plural}: {others})"
    error = _STEP_FAILED.sub("", detail.error_message or "") or detail.error_type or ""
    failed = detail.status == RunStatus.FAILED
    rows: list[tuple[str, Text]] = [
        ("run id", text(detail.run_id)),
        ("workflow id", text(workflow_id)),
        ("status", status_text(detail.status)),
        ("error", text(error, "red")),
        ("progress", text(f"{detail.steps_completed}/{detail.total_steps} steps")),
        ("failed step" if failed else "current step", text(detail.current_step)),
        ("started", text(f"{fmt_time(detail.started_at)} UTC" if detail.started_at else "")),
        ("duration", text(fmt_duration(ms) + (" so far" if still_open else ""))),
        ("host / pid", text(f"{detail.host or '?'} / {detail.pid or '?'}")),
        ("service", text(detail.service_name)),
        ("trace id", text(detail.trace_id)),
        ("trace", text(detail.trace_url, "underline")),
        ("parent run", text(detail.parent_run_id)),
    ]
    grid = Table.grid(padding=(0, 2))
    for label, value in rows:
        if value.plain:
            grid.add_row(text(label, "bold"), value)
    title = Text(detail.workflow_name or detail.workflow_id, style="bold")
    console.print(Group(title, grid))


def _axis(detail: RunDetail, now: dt.datetime) -> tuple[dt.datetime | None, float]:
    """The time axis of the waterfall: its start and its length in milliseconds.

    It spans the run and every attempt (rows from other writers may disagree a little); a run
    still in progress extends to now.
    """
    starts = [s.started_at for s in detail.steps if s.started_at is not None]
    ends = [s.completed_at or s.started_at for s in detail.steps]
    ends += [detail.completed_at, now if detail.status in ACTIVE_RUN_STATUSES else None]
    starts += [detail.started_at] if detail.started_at else []
    known_ends = [end for end in ends if end is not None]
    if not starts or not known_ends:
        return None, 0.0
    start = min(starts)
    return start, max(0.0, (max(known_ends) - start).total_seconds() * 1000)


def _slow(step: StepRecord, baselines: dict[str, float]) -> bool:
    """Whether the attempt ended (completed or failed) after longer than its step's p95."""
    p95 = baselines.get(step.step_name)
    timed = step.status in (StepStatus.COMPLETED, StepStatus.FAILED)
    return timed and p95 is not None and step.duration_ms is not None and step.duration_ms > p95


def _steps_table(
    detail: RunDetail, now: dt.datetime, console: Console, baselines: dict[str, float]
) -> Table:
    """Every step attempt, one line each, its status in words whatever the width or colour.

    The index, step, attempt, status and duration keep their width; the timeline and the
    message share the rest, and each bar is drawn to scale in the width its column gets. A step
    name is an identifier: when the console leaves it less than its length (after the timeline
    and the message got their minimum), it is shortened in its middle, never at its end.
    """
    start, total_ms = _axis(detail, now)
    step_width = _step_column_width(detail, console.width)
    title = f"Steps — timeline 0 → {fmt_duration(total_ms)}" if total_ms else "Steps"
    table = compact_table(title=title, title_justify="left", title_style="bold underline")
    key = KEY_COLUMN
    table.add_column("#", justify="right", **key)
    table.add_column("step", width=step_width, **key)
    table.add_column("try", justify="right", **key)
    table.add_column("status", min_width=max(len(s) for s in StepStatus), **key)
    table.add_column("duration", justify="right", min_width=_DURATION_WIDTH, **key)
    table.add_column("timeline", ratio=2, min_width=_TIMELINE_MIN, max_width=_TIMELINE_MAX, **key)
    table.add_column("message", ratio=3, **key)
    for step in detail.steps:
        bar: Text | Waterfall = Text("")
        if start is not None and step.started_at is not None:
            begin = (step.started_at - start).total_seconds() * 1000
            open_ = step.status == StepStatus.RUNNING and step.completed_at is None
            end = None if open_ else begin + (step.duration_ms or 0)
            bar = Waterfall(
                begin, end, total_ms, step.status, min_width=_TIMELINE_MIN, max_width=_TIMELINE_MAX
            )
        table.add_row(
            text(step.step_index),
            text(shorten_middle(step.step_name or "", step_width)),
            text(
                f"↻{step.attempt}" if step.attempt > 1 else step.attempt,
                "yellow" * (step.attempt > 1),
            ),
            status_text(step.status),
            text(_step_duration(step, now) + (SLOW_MARK if _slow(step, baselines) else "")),
            bar,
            text(truncate(step.error_message or step.message, console.width)),
        )
    return fit_table(table, console)


def _step_column_width(detail: RunDetail, width: int) -> int:
    """The step column's width: every name whole if the console allows, else what is left."""
    natural = max([len("step"), *(len(step.step_name or "") for step in detail.steps)])
    index = max(len(str(step.step_index)) for step in detail.steps)
    attempt = max(len(f"↻{step.attempt}") for step in detail.steps)
    fixed = index + attempt + max(len(s) for s in StepStatus) + _DURATION_WIDTH
    left = width - fixed - _TIMELINE_MIN - _MESSAGE_MIN - GAP * 6
    return max(min(natural, _STEP_MIN), min(natural, left))


def _step_duration(step: StepRecord, now: dt.datetime) -> str:
    """The attempt's duration; for one still running, the time so far with an ellipsis."""
    active = RunStatus.RUNNING if step.status == StepStatus.RUNNING else RunStatus.COMPLETED
    ms, still_open = run_duration_ms(
        step.duration_ms, step.started_at, now, status=active, completed_at=step.completed_at
    )
    return fmt_duration(ms) + ("…" if still_open else "")


def _print_io(console: Console, detail: RunDetail, failed: StepRecord) -> None:
    """The failing attempt's input and the outputs of the steps before it, where recorded."""
    before = [s for s in detail.steps if s.output is not None and s.step_index < failed.step_index]
    if failed.input is None and not before:
        return
    room = max(20, console.width - 4)
    if failed.input is not None:
        console.print(Text("\nInput of the failing step", style="bold"))
        console.print(text("  " + truncate(dumps_text(failed.input, sort_keys=True), room)))
    if before:
        console.print(Text("\nOutputs of the steps before it", style="bold"))
        grid = Table.grid(padding=(0, 2))
        for step in before:
            width = max(10, room - len(step.step_name) - 2)
            shown = truncate(dumps_text(step.output, sort_keys=True), width)
            grid.add_row(text(step.step_name), text(shown))
        console.print(grid)


def _print_failure(console: Console, detail: RunDetail) -> None:
    step = detail.failed_step
    console.print(Text("\nFailure", style="bold underline red"))
    if step is None:
        console.print(text(f"{detail.error_type or 'error'}: {detail.error_message or ''}", "red"))
    else:
        where = f"step {step.step_index} {step.step_name} (attempt {step.attempt})"
        console.print(text(where, "bold"))
        error = f"{step.error_type or detail.error_type or 'error'}: "
        console.print(text(error + (step.error_message or step.message or ""), "red"))
        if step.error_stacktrace:
            console.print(Text("\nStack trace", style="bold"))
            console.print(text(step.error_stacktrace.rstrip()))
        if step.log_lines:
            console.print(Text("\nLog lines", style="bold"))
            for entry in step.log_lines:
                console.print(log_line(entry))
        _print_io(console, detail, step)
    if detail.trace_url:
        console.print(Group(Text("\nTrace", style="bold"), text(detail.trace_url, "underline")))
