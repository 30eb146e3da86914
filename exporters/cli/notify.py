"""``flowtel notify``: tell a webhook or a command about every run that finishes.

It follows the history as ``flowtel tail`` does (every ``--interval`` seconds, read-only) and
sends one JSON document per matching finished run — run and workflow ids, status, the failed
step, the error, a link to the run's page with ``--base-url`` — to ``--webhook URL`` (POST) or
to ``--exec CMD`` (the JSON on its standard input), retrying with backoff. With ``--state
FILE`` it remembers where it stopped, so a restart neither repeats nor skips a run; without
one it starts from now (or ``--since``). Progress goes to stderr; ``--json`` prints each
delivered document on stdout, one per line. A database that stops answering while it
follows is reported on stderr and retried at the next poll; with ``--once`` it is exit
status 3 as for every reading command.
"""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from exporters.cli._common import (
    Duration,
    Utf8Text,
    When,
    database_errors,
    db_option,
    history_store,
)
from exporters.db.driver_errors import describe
from exporters.db.engine import display_url, resolve_database_url
from exporters.db.json import dumps_text
from exporters.notify import (
    NOTIFIED_STATUSES,
    CommandDelivery,
    Delivery,
    DeliveryError,
    Follower,
    Notice,
    NotifyState,
    StateFileError,
    WebhookDelivery,
)
from exporters.notify.deliver import shown_url
from instrumentation.attributes import RunStatus

__all__ = ["notify"]

_DEFAULT_STATUSES = (str(RunStatus.FAILED), str(RunStatus.ABANDONED))


@click.command()
@db_option
@click.option("--webhook", metavar="URL", type=Utf8Text(), help="POST each notice to this URL.")
@click.option(
    "--exec",
    "command",
    metavar="CMD",
    type=Utf8Text(),
    help="Run CMD for each notice, the JSON on its standard input (no shell; exit 0 = taken).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([str(status) for status in NOTIFIED_STATUSES]),
    help="Notify about runs that end so; repeatable (default: failed and abandoned).",
)
@click.option("--workflow", type=Utf8Text(), metavar="NAME", help="Only runs of this workflow.")
@click.option(
    "--base-url",
    metavar="URL",
    type=Utf8Text(),
    help="flowtel serve's address: each notice gets a link to its run's page.",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Remember here where it stopped (a restart neither repeats nor skips a run).",
)
@click.option(
    "--since",
    type=When(),
    metavar="WHEN",
    help="With no state yet, start with runs ended since WHEN (default: now).",
)
@click.option(
    "--lookback",
    type=Duration(),
    default="1h",
    show_default=True,
    help="Runs that reach the database this late after they ended are still sent.",
)
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between polls.",
)
@click.option(
    "--max-attempts",
    default=10,
    show_default=True,
    type=click.IntRange(min=0),
    help="Attempts per notice before it is given up on and listed in the state (0: never).",
)
@click.option(
    "--retry-delay",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="First backoff in seconds; it doubles after each failed attempt (at most 5 min).",
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds one delivery may take.",
)
@click.option("--once", is_flag=True, help="Deliver what has finished so far, then exit.")
@click.option("--json", "as_json", is_flag=True, help="Print each delivered notice on stdout.")
def notify(
    db: str | None,
    webhook: str | None,
    command: str | None,
    statuses: tuple[str, ...],
    workflow: str | None,
    base_url: str | None,
    state_file: Path | None,
    since: dt.datetime | None,
    lookback: dt.timedelta,
    interval: float,
    max_attempts: int,
    retry_delay: float,
    timeout: float,
    once: bool,
    as_json: bool,
) -> None:
    """Send a notice for every run that finishes (failed ones by default).

    \b
    Examples:
      flowtel notify --webhook https://hooks.example.com/T0/B0 --state notify.json
      flowtel notify --exec "logger -t flowtel" --status failed --status cancelled
    """
    if (webhook is None) == (command is None):
        raise click.UsageError("give one of --webhook URL or --exec CMD")
    delivery: Delivery
    try:
        if webhook is not None:
            delivery = WebhookDelivery(webhook, timeout=timeout)
            target = shown_url(webhook)
        else:
            delivery = CommandDelivery(shlex.split(str(command)), timeout=timeout)
            target = str(command)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        state = NotifyState(
            state_file, start=since or dt.datetime.now(dt.UTC), lookback=lookback
        )
    except StateFileError as exc:
        raise click.ClickException(str(exc)) from None

    def delivered(notice: Notice, attempts: int) -> None:
        if as_json:
            click.echo(dumps_text(notice.to_json()))
        extra = f" after {attempts} attempts" if attempts > 1 else ""
        click.echo(
            f"notified: run {notice.run_id} ({notice.workflow_id}, {notice.status}){extra}",
            err=True,
        )

    def failed(notice: Notice, error: DeliveryError, delay: float | None) -> None:
        then = f"retrying in {delay:g}s" if delay is not None else "giving up on it"
        click.echo(f"notify: run {notice.run_id}: {error}; {then}", err=True)

    chosen = statuses or _DEFAULT_STATUSES
    with history_store(db) as store:
        follower = Follower(
            store,
            delivery,
            state,
            statuses=chosen,
            workflow=workflow,
            base_url=base_url,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            on_delivered=delivered,
            on_failure=failed,
        )
        shown = display_url(resolve_database_url(db))
        click.echo(
            f"notify: {', '.join(chosen)} runs in {shown} -> {target}"
            + ("" if once else f", every {interval:g}s (Ctrl-C to stop)"),
            err=True,
        )
        try:
            if once:
                with database_errors(db):
                    follower.poll()
                return
            _follow(follower, interval, db)
        except StateFileError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            return  # a follower ends with Ctrl-C: exit status 0, its state already saved
        finally:
            stats = follower.stats
            click.echo(
                f"notify: {stats.delivered} delivered, {stats.failures} failed attempts, "
                f"{stats.given_up} given up",
                err=True,
            )


def _follow(follower: Follower, interval: float, db: str | None) -> None:
    failing = False
    while True:
        try:
            follower.poll()
            if failing:
                click.echo("notify: the history database answers again", err=True)
            failing = False
        except SQLAlchemyError as exc:
            if not failing:
                url = resolve_database_url(db)
                click.echo(
                    f"notify: cannot read {display_url(url)}: {describe(exc, url)}; "
                    "retrying every poll",
                    err=True,
                )
            failing = True
        follower.sleep(interval)
