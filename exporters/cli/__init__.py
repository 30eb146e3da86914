"""The ``flowtel`` command line: record the demo and read the history back.

:data:`main` is the click group behind the ``flowtel`` console script (and
``python -m exporters.cli``). Each command lives in its own module: ``demo`` in
:mod:`exporters.cli.demo`, ``runs`` and ``show`` in :mod:`exporters.cli.history`, ``stats`` in
:mod:`exporters.cli.stats`, ``tail`` in :mod:`exporters.cli.tail`. Database
problems end with one line naming the database (password masked) and exit status 3; an unknown
run ends with exit status 1; Ctrl-C with ``Interrupted.`` and exit status 130 (``tail``, a live
view, ends with 0).
"""

from __future__ import annotations

from typing import Any

import click

from exporters.cli.db import db
from exporters.cli.demo import demo
from exporters.cli.exit_status import ExitStatus
from exporters.cli.history import runs, show
from exporters.cli.ingest import ingest
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
main.add_command(ingest)
main.add_command(reap)
main.add_command(runs)
main.add_command(serve)
main.add_command(show)
main.add_command(spool)
main.add_command(stats)
main.add_command(tail)
