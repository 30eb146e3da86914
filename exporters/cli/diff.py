"""``flowtel diff``: how one run differs from another, step by step.

``flowtel diff RUN_A RUN_B`` compares run B with run A; ``flowtel diff RUN`` compares a run
with the latest completed run of its workflow started before it (the last good one). Runs are
named as ``flowtel show`` takes them (run id, unique prefix, workflow id). It prints the two
runs, the context keys whose values differ, then one line per step: status, attempts and
duration in A and B with the change, a mark on steps slower than their p95 over the
workflow's last completed runs, and under the table the messages, errors, inputs and outputs
that changed (inputs and outputs as recorded JSON, where a step records them).
``--json`` prints the whole comparison (``HistoryStore.diff_runs``).
"""

from __future__ import annotations

from collections.abc import Callable

import click
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from exporters.cli._common import NOTHING_RECORDED, Utf8Text, db_option, echo_json, history_store
from exporters.cli._format import (
    KEY_COLUMN,
    compact_table,
    fit_table,
    fmt_duration,
    status_text,
    text,
    truncate,
)
from exporters.query.diff import SLOW_MARK, RunDiff, StepChange, StepSide, recorded_text
from exporters.query.error_types import short_error_type
from exporters.query.store import AmbiguousRunError, RunNotFoundError

__all__ = ["diff"]

_NONE = "-"  # a value one run does not have
_STEP_WIDTH = 40  # step names up to this long are never shortened


@click.command()
@click.argument("run_a", type=Utf8Text())
@click.argument("run_b", type=Utf8Text(), required=False)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def diff(run_a: str, run_b: str | None, db: str | None, as_json: bool) -> None:
    """Compare RUN_B with RUN_A, or RUN_A with its workflow's last completed run.

    \b
    Examples:
      flowtel diff 3f2a9c1e 77aa0b12
      flowtel diff provision_srv-0042      # its latest run against the last good one
    """
    first, second = (None, run_a) if run_b is None else (run_a, run_b)
    with history_store(db) as store:
        if store is None:
            raise click.ClickException(NOTHING_RECORDED)
        try:
            result = store.diff_runs(first, second)
        except (RunNotFoundError, AmbiguousRunError) as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(result.to_json())
        return
    console = Console(highlight=False, soft_wrap=False)
    _print(console, result)


def _print(console: Console, result: RunDiff) -> None:
    console.print(Group(*_run_lines(result)))
    if result.context:
        grid = Table.grid(padding=(0, 2))
        for change in result.context:
            grid.add_row(text(change.key, "bold"), _arrow(change.a, change.b))
        console.print(Group(Text("\nContext that differs", style="bold underline"), grid))
    console.print(_steps_table(result, console))
    notes = [line for step in result.steps for line in _step_notes(step, console.width)]
    if notes:
        console.print(Group(Text("\nWhat else changed", style="bold underline"), *notes))
    if result.only_in_a or result.only_in_b:
        console.print(Text("\nSteps in one run only", style="bold underline"))
        for label, names in (("A", result.only_in_a), ("B", result.only_in_b)):
            if names:
                console.print(text(f"only in {label}: " + ", ".join(names)))
    if any(side.slow for s in result.steps for side in (s.a, s.b) if side is not None):
        console.print(
            text(
                f"{SLOW_MARK} slower than the step's p95 over the last {result.baseline_runs} "
                "completed runs of this workflow",
                "dim",
            )
        )


def _run_lines(result: RunDiff) -> list[Text]:
    lines = []
    for label, run in (("A", result.a), ("B", result.b)):
        line = Text(f"{label}  ", style="bold")
        line.append(run.run_id + "  ")
        line.append_text(status_text(run.status))
        line.append("  " + fmt_duration(run.duration_ms))
        if label == "B" and result.duration_change_ms is not None:
            line.append(f" ({_signed(result.duration_change_ms)})")
        lines.append(line)
        lines.append(text(f"   {run.workflow_id}", "dim"))
    return lines


def _steps_table(result: RunDiff, console: Console) -> Table:
    table = compact_table(title="Steps (A → B)", title_justify="left",
                          title_style="bold underline")  # fmt: skip
    longest = max((len(step.step_name) for step in result.steps), default=4)
    retried = any(side.attempts > 1 for s in result.steps for side in (s.a, s.b) if side)
    table.add_column("#", justify="right", **KEY_COLUMN)
    table.add_column("step", min_width=min(longest, _STEP_WIDTH), **KEY_COLUMN)
    table.add_column("status", **KEY_COLUMN)
    if retried:
        table.add_column("tries", justify="right", **KEY_COLUMN)
    table.add_column("duration", justify="right", **KEY_COLUMN)
    table.add_column("change", justify="right", **KEY_COLUMN)
    for step in result.steps:
        side = step.b or step.a
        cells = [
            text(side.step_index if side is not None else ""),
            text(step.step_name, "bold" if step.changed else ""),
            _status_cell(step),
        ]
        if retried:
            cells.append(_pair(step.a, step.b, lambda s: str(s.attempts)))
        cells.append(_pair(step.a, step.b, _duration_of))
        change = step.duration_change_ms
        cells.append(text(_signed(change) if change is not None else ""))
        table.add_row(*cells)
    return fit_table(table, console)


def _status_cell(step: StepChange) -> Text:
    if step.a is None or step.b is None:
        only = step.a or step.b
        cell = status_text(only.status) if only is not None else Text("")
        cell.append(", A only" if step.b is None else ", B only", style="dim")
        return cell
    if not step.status_changed:
        return status_text(step.b.status)
    cell = status_text(step.a.status)
    cell.append(" → ")
    cell.append_text(status_text(step.b.status))
    return cell


def _duration_of(side: StepSide) -> str:
    return fmt_duration(side.duration_ms) + (SLOW_MARK if side.slow else "")


def _pair(a: StepSide | None, b: StepSide | None, value: Callable[[StepSide], str]) -> Text:
    if a is None or b is None:
        only = a or b
        return text(value(only) if only is not None else "")
    left, right = value(a), value(b)
    return text(str(right) if left == right else f"{left} → {right}")


def _step_notes(step: StepChange, width: int) -> list[Text]:
    if step.a is None or step.b is None:
        return []
    room = max(20, width - 6)
    notes = []
    for what, changed, before, after in (
        ("error", step.error_changed, _error(step.a), _error(step.b)),
        ("message", step.message_changed, step.a.message or _NONE, step.b.message or _NONE),
        ("input", step.input_changed, recorded_text(step.a.input), recorded_text(step.b.input)),
        ("output", step.output_changed, recorded_text(step.a.output), recorded_text(step.b.output)),
    ):
        if changed:
            notes.append(text(f"{step.step_name}: {what}", "bold"))
            notes.append(text(f"  A  {truncate(before, room)}"))
            notes.append(text(f"  B  {truncate(after, room)}", "red" if what == "error" else ""))
    return notes


def _error(side: StepSide) -> str:
    if side.error_type is None and side.error_message is None:
        return "none"
    short = short_error_type(side.error_type) or "error"
    return f"{short}: {side.error_message or ''}".strip()


def _arrow(a: object, b: object) -> Text:
    left = _NONE if a is None else str(a)
    right = _NONE if b is None else str(b)
    return text(f"{left} → {right}")


def _signed(ms: int) -> str:
    return ("+" if ms >= 0 else "-") + fmt_duration(abs(ms))
