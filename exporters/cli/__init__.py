"""The ``flowtel`` command line: record, receive, read, serve and maintain the history.

:data:`main` is the click group behind the ``flowtel`` console script (and
``python -m exporters.cli``). Each command lives in its own module: ``demo`` (simulated
provisioning runs) in :mod:`exporters.cli.demo`; ``runs`` (list) and ``show`` (one run) in
:mod:`exporters.cli.history`; ``stats`` (per workflow over a window) in
:mod:`exporters.cli.stats`; ``tail`` (running workflows, live) in :mod:`exporters.cli.tail`;
``serve`` (web API and pages) in :mod:`exporters.cli.serve`; ``ingest`` (the OTLP receiver
behind the collector) in :mod:`exporters.cli.ingest`; ``reap`` (mark dead runs
``abandoned``) in :mod:`exporters.cli.reap`; ``db upgrade``/``current``/``check``/``prune`` in
:mod:`exporters.cli.db`; ``spool status``/``replay`` in :mod:`exporters.cli.spool`. Shared
options and error handling are in :mod:`._common`, terminal formatting in :mod:`._format`, exit
statuses in :mod:`.exit_status`. Database problems end with one line naming the database
(password masked) and exit status 3; an unknown run ends with exit status 1; Ctrl-C with
``Interrupted.`` and exit status 130 (``tail``, a live view, ends with 0). May import every
other package of :mod:`exporters` and :mod:`instrumentation`; nothing imports it.
"""

from __future__ import annotations

from typing import Any

import click

from exporters.cli.db import db
from exporters.cli.demo import demo
from exporters.cli.diff import diff
from exporters.cli.exit_status import ExitStatus
from exporters.cli.history import runs, show
from exporters.cli.ingest import ingest
from exporters.cli.notify import notify
from exporters.cli.reap import reap
from exporters.cli.serve import serve
from exporters.cli.spool import spool
from exporters.cli.stats import stats
from exporters.cli.tail import tail
from instrumentation import __version__

__all__ = ["main"]


class _FlowtelGroup(click.Group):
    """The ``flowtel`` group: Ctrl-C ends any command with one line and exit status 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(int(ExitStatus.INTERRUPTED))


@click.group(cls=_FlowtelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="flowtel")
def main() -> None:
    """flowtel: workflow runs recorded as SQL history and OpenTelemetry traces."""


main.add_command(db)
main.add_command(demo)
main.add_command(diff)
main.add_command(ingest)
main.add_command(notify)
main.add_command(reap)
main.add_command(runs)
main.add_command(serve)
main.add_command(show)
main.add_command(spool)
main.add_command(stats)
main.add_command(tail)
