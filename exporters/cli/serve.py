"""``flowtel serve``: the history as a web API and pages, read-only, on uvicorn.

It binds to 127.0.0.1:8765 by default. Any other address needs a token (``--token`` or
``FLOWTEL_SERVE_TOKEN``): without one it refuses to start (usage error, exit status 2), since the
history holds server names, errors and context. With a token every request needs
``Authorization: Bearer <token>``. The database is opened read-only; one that cannot be opened
at start ends with exit status 3, as in the other reading commands. The web stack is the
``flowtel[web]`` extra; without it the command says what to install. At most ``--max-streams``
live streams are open at once (one more is answered 503, and the page retries), and uvicorn
serves at most that many plus :data:`OTHER_REQUESTS` connections. Before serving it freezes
its start-up objects out of the garbage collector's sight (``gc.freeze()``).
"""

from __future__ import annotations

import gc
import os

import click

from exporters.access import is_loopback
from exporters.cli._common import BadDatabaseURL, database_errors, db_option

__all__ = ["serve"]

TOKEN_ENV = "FLOWTEL_SERVE_TOKEN"
DEFAULT_MAX_STREAMS = 100
"""``--max-streams``'s default: the live streams (open pages) one server holds at once."""
OTHER_REQUESTS = 64
"""Connections beyond the live streams uvicorn serves at once (pages, API, static files)
before it answers 503 itself."""


@click.command()
@db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port."
)
@click.option(
    "--token",
    metavar="T",
    envvar=TOKEN_ENV,
    show_envvar=True,
    help="Require 'Authorization: Bearer T' on every request (needed off loopback).",
)
@click.option(
    "--poll-interval",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0.05),
    help="Seconds between looks at the runs in progress (live updates).",
)
@click.option(
    "--max-streams",
    default=DEFAULT_MAX_STREAMS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Live streams (open pages) served at once; more get 503 and retry.",
)
@click.option(
    "--root-path",
    metavar="PATH",
    default="",
    help="The path prefix a reverse proxy serves this under (e.g. /flowtel).",
)
def serve(
    db: str | None,
    host: str,
    port: int,
    token: str | None,
    poll_interval: float,
    max_streams: int,
    root_path: str,
) -> None:
    """Serve the history as a web API and pages (read-only) until Ctrl-C.

    Pages: / (runs), /runs/RUN, /stats. API: /api/runs, /api/runs/RUN, /api/stats,
    /api/health, /api/events (live), /api/workflow_history, /openapi.json.
    """
    if not is_loopback(host) and not token:
        raise click.UsageError(
            f"binding to {host} exposes the history beyond this machine: a token is needed "
            f"(--token or ${TOKEN_ENV}); clients then send 'Authorization: Bearer <token>'"
        )
    try:
        import uvicorn

        from exporters.serve.app import create_app
        from exporters.serve.engine import readonly_engine
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"flowtel serve needs the web extra ({exc.name} is missing): pip install 'flowtel[web]'"
        ) from None
    from exporters.db.engine import display_url, resolve_database_url

    with database_errors(db):
        shown = display_url(resolve_database_url(db))
        engine = readonly_engine(db)
        engine.connect().close()  # fail now (exit 3), not on the first request
    try:
        app = create_app(
            engine=engine,
            token=token,
            poll_interval=poll_interval,
            label=shown,
            max_streams=max_streams,
        )
    except ValueError as exc:
        raise BadDatabaseURL(str(exc)) from None
    where = f"[{host}]" if ":" in host else host
    click.echo(f"flowtel serve: {shown} on http://{where}:{port}/", err=True)
    if token:
        click.echo("  every request needs 'Authorization: Bearer <token>'", err=True)
    # What start-up built (modules, the app, the engine) lives as long as the server: out of
    # the cyclic collector's sight, a full collection walks only what requests made since, not
    # every imported object (the tens of ms a full pass took stats pages; docs/operations.md).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=os.environ.get("FLOWTEL_SERVE_LOG_LEVEL", "warning"),
        timeout_graceful_shutdown=2,
        proxy_headers=False,
        root_path=root_path.rstrip("/"),
        # the streams' own cap answers first (503 JSON); this bounds everything else
        limit_concurrency=max_streams + OTHER_REQUESTS,
    )
