"""``flowtel stats``: how each workflow did over a window, without writing SQL.

For the runs started in the window (``--since 7d`` by default) it prints, per workflow, the
runs by outcome, the success rate and the p50/p95/max duration of completed runs; the steps that
failed most with their most common error; every step's attempts, failures, retries and
p50/p95/max duration; with ``--every 1h|1d`` the runs per interval (by outcome, p50/p95
duration) with a bar each; and with ``--by`` the same run figures split by device type, any
other column listed in :data:`~exporters.query.stats.BY_COLUMNS` or a key of the runs' context.
``--json`` prints the :class:`~exporters.query.stats.StatsReport` with stable keys instead.
"""

from __future__ import annotations

import datetime as dt

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from exporters.cli._common import (
    NOTHING_RECORDED,
    Duration,
    Utf8Text,
    When,
    db_option,
    echo_json,
    history_store,
    make_console,
)
from exporters.cli._format import (
    KEY_COLUMN,
    compact_table,
    fit_table,
    fmt_duration,
    fmt_rate,
    fmt_time,
    text,
    truncate,
)
from exporters.query.error_types import short_error_type
from exporters.query.records import GroupStats, StatsReport, WorkflowStats

__all__ = ["stats"]

_DEFAULT_SINCE = "7d"
_STEP_MIN = 12  # a step name or error class keeps this much before its ellipsis


@click.command()
@db_option
@click.option(
    "--since",
    type=When(),
    default=_DEFAULT_SINCE,
    show_default=True,
    help="Runs started at or after: 30m, 24h, 7d or 2026-11-01.",
)
@click.option("--until", type=When(), help="Runs started before (default: now).")
@click.option("--workflow", type=Utf8Text(), metavar="NAME", help="Only this workflow name.")
@click.option(
    "--by",
    type=Utf8Text(),
    metavar="KEY",
    help="Split runs by device_type, server_id, host, ... or any context key (server_ip).",
)
@click.option(
    "--top",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Failing steps listed per workflow.",
)
@click.option(
    "--every",
    type=Duration(),
    metavar="INTERVAL",
    help="Also show each workflow's runs per interval: 1h, 1d (a trend over the window).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def stats(
    db: str | None,
    since: dt.datetime,
    until: dt.datetime | None,
    workflow: str | None,
    by: str | None,
    top: int,
    every: dt.timedelta | None,
    as_json: bool,
) -> None:
    """How each workflow did over a time window.

    Per workflow: runs by outcome, success rate, p50/p95/max duration of completed runs, the
    steps that failed most with their most common error, and every step's attempts, failures,
    retries and median duration; with --by, the runs split by a column or context key.
    """
    with history_store(db) as store:
        if store is None:
            report = None
        else:
            try:
                report = store.stats(
                    since=since, until=until, workflow=workflow, by=by, top=top, every=every
                )
            except ValueError as exc:
                hint = "'--every'" if "every" in str(exc) else "'--by'"
                raise click.BadParameter(str(exc), param_hint=hint) from None
    if as_json:
        empty = StatsReport(since, until or dt.datetime.now(dt.UTC), by, [])
        echo_json((report or empty).to_json())
        return
    console = make_console()
    if report is None:
        console.print(NOTHING_RECORDED)
        return
    window = f"runs started {fmt_time(report.since)} → {fmt_time(report.until)} UTC"
    if not report.workflows:
        console.print(f"No {window}; widen the window with --since (e.g. --since 30d).")
        return
    console.print(Text(f"Statistics of the {window}", style="dim"))
    for entry in report.workflows:
        _print_workflow(console, entry, report)


def _print_workflow(console: Console, entry: WorkflowStats, report: StatsReport) -> None:
    totals = entry.totals
    headline = Text(f"\n{entry.workflow_name}", style="bold")
    plural = "" if totals.runs == 1 else "s"
    headline.append(f"  {totals.runs} run{plural} · {fmt_rate(totals.success_rate)} success", "")
    headline.append(
        f" · p50 {fmt_duration(totals.p50_ms) or '-'} · p95 {fmt_duration(totals.p95_ms) or '-'}"
        f" · max {fmt_duration(totals.max_ms) or '-'}"
    )
    console.print(headline)
    outcomes = Text("  ")
    for label, count, style in (
        ("completed", totals.completed, "green"),
        ("failed", totals.failed, "red"),
        ("cancelled", totals.cancelled, "magenta"),
        ("abandoned", totals.abandoned, "red"),
        ("running", totals.running, "yellow"),
    ):
        outcomes.append(f"{label} {count}   ", style if count else "dim")
    console.print(outcomes)
    if entry.top_failing_steps:
        console.print(_failing_table(entry, console))
    if entry.steps:
        console.print(_steps_table(entry, console))
    if report.by is not None and entry.groups:
        console.print(_groups_table(report.by, entry.groups, console))
    if entry.trend:
        console.print(_trend_table(entry, console))


def _class_name(error_type: str | None) -> str:
    """The exception's class without its module (``--json`` keeps the full type)."""
    return short_error_type(error_type) or "unknown"


def _failing_table(entry: WorkflowStats, console: Console) -> Table:
    """The steps that failed most; the step and the example message share the width left."""
    table = compact_table(title="Top failing steps", title_justify="left")
    table.add_column("#", justify="right", **KEY_COLUMN)
    table.add_column("step", ratio=1, min_width=_STEP_MIN, **KEY_COLUMN)
    table.add_column("failures", justify="right", **KEY_COLUMN)
    table.add_column("most common error", ratio=1, min_width=_STEP_MIN, **KEY_COLUMN)
    table.add_column("example", ratio=2, **KEY_COLUMN)
    for failing in entry.top_failing_steps:
        table.add_row(
            text(failing.step_index),
            text(failing.step_name),
            text(failing.failures, "red"),
            text(f"{_class_name(failing.error_type)} ({failing.error_count}/{failing.failures})"),
            text(truncate(failing.example_message, console.width), "dim"),
        )
    return fit_table(table, console)


def _steps_table(entry: WorkflowStats, console: Console) -> Table:
    sampled = any(step.median_sample < step.completed for step in entry.steps)
    caption = "medians over a sample of the runs (--json: median_sample)" if sampled else None
    table = compact_table(title="Steps", title_justify="left", caption=caption)
    for header in ("#", "step", "attempts", "failures", "retries", "skipped", "p50", "p95", "max"):
        name = header == "step"
        table.add_column(
            header, justify="left" if name else "right", ratio=1 if name else None, **KEY_COLUMN
        )
    for step in entry.steps:
        table.add_row(
            text(step.step_index),
            text(step.step_name),
            text(step.attempts),
            text(step.failures, "red" if step.failures else "dim"),
            text(step.retries, "yellow" if step.retries else "dim"),
            text(step.skipped, "" if step.skipped else "dim"),
            text(fmt_duration(step.median_ms) or "-"),
            text(fmt_duration(step.p95_ms) or "-"),
            text(fmt_duration(step.max_ms) or "-"),
        )
    return fit_table(table, console)


def _trend_table(entry: WorkflowStats, console: Console) -> Table:
    """One line per interval: runs by outcome, p50/p95, and a bar of runs (failed in red)."""
    table = compact_table(title="Per interval", title_justify="left")
    for header in ("interval (UTC)", "runs", "failed", "p50", "p95", ""):
        table.add_column(header, justify="left" if not header or "UTC" in header else "right",
                         **KEY_COLUMN)  # fmt: skip
    busiest = max((point.runs for point in entry.trend), default=0) or 1
    days = {point.start.date() for point in entry.trend}
    for point in entry.trend:
        when = point.start.strftime("%Y-%m-%d %H:%M" if len(days) > 1 else "%H:%M")
        bar = Text()
        width = 20
        failed_cells = round(width * point.failed / busiest)
        other_cells = round(width * point.runs / busiest) - failed_cells
        bar.append("█" * max(0, other_cells), "green")
        bar.append("█" * failed_cells, "red")
        table.add_row(
            text(when),
            text(point.runs, "" if point.runs else "dim"),
            text(point.failed, "red" if point.failed else "dim"),
            text(fmt_duration(point.p50_ms) or "-"),
            text(fmt_duration(point.p95_ms) or "-"),
            bar,
        )
    return fit_table(table, console)


def _groups_table(by: str, groups: list[GroupStats], console: Console) -> Table:
    table = compact_table(title=f"By {by}", title_justify="left")
    table.add_column(by, ratio=1, **KEY_COLUMN)
    for header in ("runs", "failed", "success", "p50", "p95", "max"):
        table.add_column(header, justify="right", **KEY_COLUMN)
    for group in groups:
        table.add_row(
            text(group.group),
            text(group.runs),
            text(group.failed, "red" if group.failed else "dim"),
            text(fmt_rate(group.success_rate)),
            text(fmt_duration(group.p50_ms) or "-"),
            text(fmt_duration(group.p95_ms) or "-"),
            text(fmt_duration(group.max_ms) or "-"),
        )
    return fit_table(table, console)
