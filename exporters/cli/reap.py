"""``flowtel reap --older-than 10m``: give up on runs whose process stopped beating.

A writer refreshes ``updated_at`` of its running runs every few seconds; a process that died
(SIGKILL, OOM, power cut) leaves its runs ``running`` forever. ``reap`` marks those whose
heartbeat is older than ``--older-than`` as ``abandoned``, with the reason in
``metadata.abandoned`` (see :func:`exporters.ops.reaper.reap`); if the process was merely stalled,
its own terminal write still replaces ``abandoned`` later. ``--older-than`` takes the duration
grammar of :mod:`exporters.ops.durations` (``90``, ``30s``, ``10m``, ``1.5h``, ``1d``, ``1w``). A
missing database reaps nothing; one that cannot be reached ends with exit status 3.
"""

from __future__ import annotations

import datetime as dt

import click

from exporters.cli._common import Duration, db_option, echo_json, history_store
from exporters.cli._format import fmt_time
from exporters.ops.durations import duration_text
from exporters.ops.reaper import reap as reap_runs

__all__ = ["reap"]


@click.command()
@db_option
@click.option(
    "--older-than",
    type=Duration(),
    default="10m",
    show_default=True,
    help="Reap running runs whose last heartbeat is older than this.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of text.")
def reap(db: str | None, older_than: dt.timedelta, as_json: bool) -> None:
    """Mark running runs without a recent heartbeat as abandoned."""
    with history_store(db, writable=True) as store:
        reaped = reap_runs(store.engine, older_than)
    if as_json:
        echo_json(
            {
                "older_than_s": older_than.total_seconds(),
                "reaped": reaped,  # their datetimes in the one --json form
            }
        )
        return
    limit = duration_text(older_than)
    if not reaped:
        click.echo(f"No running run has been silent for more than {limit}.")
        return
    click.echo(f"Marked {len(reaped)} run(s) abandoned (no heartbeat for more than {limit}):")
    for run in reaped:
        seen = f"{fmt_time(run.last_heartbeat)} UTC" if run.last_heartbeat else "never"
        click.echo(
            f"  {run.run_id}  {run.workflow_id}  pid {run.pid} on {run.host}, last seen {seen}"
        )
