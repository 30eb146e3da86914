"""``flowtel tail``: the live view of the workflows running now, until Ctrl-C.

Every ``--interval`` seconds it reads the ``pending`` and ``running`` runs and redraws one table:
workflow, ids, the current step, progress as a bar, the run's age and how long ago its row was
last written (a run whose process died stops advancing it; ``flowtel reap`` marks those).
On a terminal the frame is redrawn in place with :class:`rich.live.Live`; when the output is a
pipe or a file each frame is printed after the last. ``--once`` prints one frame and exits.
Ctrl-C ends the view with exit status 0 and no traceback.
"""

from __future__ import annotations

import datetime as dt
import time

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

from exporters.cli._columns import Column, Role, fitted_table
from exporters.cli._common import (
    MAX_LIMIT,
    NOTHING_RECORDED,
    Utf8Text,
    db_option,
    history_store,
    make_console,
)
from exporters.cli._format import (
    fmt_age,
    fmt_time,
    progress_bar,
    status_text,
    text,
)
from exporters.query.lookup import unique_prefixes
from exporters.query.store import HistoryStore

__all__ = ["render_frame", "tail"]

_STALE_AFTER = dt.timedelta(minutes=2)  # no write for this long: shown in red


def render_frame(
    store: HistoryStore,
    *,
    workflow: str | None,
    limit: int,
    interval: float | None,
    width: int = 200,
) -> RenderableType:
    """One frame: the active runs as a table under a line with the time and the count.

    Args:
        store: where to read the runs.
        workflow: only runs of this workflow name.
        limit: the most runs shown.
        interval: the refresh interval to mention, or ``None`` for a single frame.
        width: the console's width. The run, status, progress and times keep theirs; the
            progress bar gives way to its count, then the workflow id, server, step and
            workflow name (a column only when several workflows run) are shortened in their
            middle, never at their end.
    """
    now = dt.datetime.now(dt.UTC)
    active = store.active_runs(workflow=workflow, limit=limit)
    names = {run.workflow_name for run in active}
    one_name = next(iter(names)) if len(names) == 1 else None
    heading = Text(f"{len(active)} running", style="bold")
    if one_name:
        heading.append(f" {one_name}", style="bold")
    heading.append(f" · {fmt_time(now)} UTC", style="dim")
    if interval is not None:
        heading.append(f" · every {interval:g}s · Ctrl-C to stop", style="dim")
    if not active:
        return Group(heading, Text("No workflow is running.", style="dim"))
    with store.engine.connect() as conn:
        short = unique_prefixes(conn, [run.run_id for run in active])
    written = [run.updated_at or run.started_at for run in active]
    stale = [w is not None and now - w > _STALE_AFTER for w in written]
    columns = [Column("run", [text(short[run.run_id]) for run in active])]
    if one_name is None:
        columns.append(
            Column("workflow", [text(run.workflow_name) for run in active], Role.ID, droppable=True)
        )
    columns += [
        Column("workflow id", [text(run.workflow_id) for run in active], Role.ID),
        Column("server", [text(run.server_id) for run in active], Role.ID, droppable=True),
        Column("status", [status_text(run.status) for run in active]),
        Column("step", [text(run.current_step) for run in active], Role.ID),
        Column(
            "progress",
            [progress_bar(run.steps_completed, run.total_steps) for run in active],
            compact=[text(f"{run.steps_completed}/{run.total_steps}") for run in active],
        ),
        Column("age", [text(fmt_age(run.started_at, now)) for run in active], justify="right"),
        Column(
            "last write",
            [
                text(fmt_age(w, now) + " ago" if w else "", "red" if late else "dim")
                for w, late in zip(written, stale, strict=True)
            ],
            justify="right",
        ),
    ]
    return Group(heading, fitted_table(columns, width))


@click.command()
@db_option
@click.option(
    "--workflow", type=Utf8Text(), metavar="NAME", help="Only runs of this workflow name."
)
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between refreshes.",
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, MAX_LIMIT),
    help="Most runs shown.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit.")
def tail(db: str | None, workflow: str | None, interval: float, limit: int, once: bool) -> None:
    """Watch the running workflows until Ctrl-C.

    Each run's current step, progress and age, and how long ago its row was last written,
    refreshed every --interval seconds.
    """
    console = make_console()
    try:
        with history_store(db) as store:
            if store is None:
                console.print(NOTHING_RECORDED)
                return

            def render(every: float | None) -> RenderableType:
                return render_frame(
                    store, workflow=workflow, limit=limit, interval=every, width=console.width
                )

            if once:
                console.print(render(None))
                return
            frame = render(interval)
            if not console.is_terminal:
                while True:  # a pipe or a file: one frame after the other
                    console.print(frame)
                    console.file.flush()
                    time.sleep(interval)
                    frame = render(interval)
            with Live(frame, console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    frame = render(interval)
                    live.update(frame, refresh=True)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a live view ends: exit status 0, no traceback
