"""The ``flowtel serve`` application: a JSON API, server-rendered pages and a live stream.

:func:`create_app` builds a FastAPI application on a read-only engine
(:func:`~exporters.serve.engine.readonly_engine`): it makes the one shared
:class:`~exporters.serve.state.ServeState`, installs the guard (:mod:`.security`) and the error
handlers (:mod:`.responses`), mounts the static files and includes one router per concern:
:mod:`.routes.api` (the JSON API, described by ``/openapi.json``), :mod:`.routes.events` (the
Server-Sent Events of ``/api/events``) and :mod:`.routes.pages` (``/``, ``/runs/{run}``,
``/stats`` and the partials they refresh from). Bad parameters answer 400/422 with a JSON
body, an unknown run 404, a database that cannot be read 503 (pages say so and retry every few
seconds); no traceback ever reaches a client.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import URL, Engine

from exporters.db.engine import display_url, resolve_database_url
from exporters.query.store import HistoryStore
from exporters.serve.engine import readonly_engine
from exporters.serve.live import DEFAULT_MAX_STREAMS, LiveFeed
from exporters.serve.params import BadParameter, parse_when
from exporters.serve.responses import install_error_handlers, make_templates
from exporters.serve.routes import api, compare, events, pages
from exporters.serve.security import Guard
from exporters.serve.state import ServeState
from instrumentation import __version__

__all__ = ["BadParameter", "create_app", "parse_when"]

_STATIC = Path(__file__).parent / "static"


def create_app(
    database_url: str | URL | None = None,
    *,
    engine: Engine | None = None,
    token: str | None = None,
    poll_interval: float = 0.5,
    label: str | None = None,
    max_streams: int = DEFAULT_MAX_STREAMS,
) -> FastAPI:
    """The application on the history at *database_url* (opened read-only), or on *engine*.

    Args:
        database_url: the history database (default: ``FLOWTEL_DATABASE_URL`` or
            ``flowtel.db``); ignored when *engine* is given.
        engine: an engine to read through instead (the caller keeps it read-only).
        token: when set, every request needs ``Authorization: Bearer <token>``.
        poll_interval: seconds between two looks at the runs in progress for the live stream.
        label: how pages and ``/api/health`` name the database (default: its URL, password
            masked).
        max_streams: how many ``/api/events`` streams may be open at once; one more is
            answered 503 with ``Retry-After``. All streams share one look at the database
            per *poll_interval*, so this bounds connections, not SQL.

    Raises:
        DatabaseURLError: the URL cannot be used.
        ValueError: *max_streams* is below 1.
    """
    if max_streams < 1:
        raise ValueError(f"max_streams must be at least 1, got {max_streams}")
    if engine is None:
        label = label or display_url(resolve_database_url(database_url))
        engine = readonly_engine(database_url)
    state = ServeState(
        engine=engine,
        store=HistoryStore(engine),
        database=label or display_url(engine.url),
        templates=make_templates(),
        live=LiveFeed(engine, poll_interval, max_streams),
    )
    app = FastAPI(
        title="flowtel",
        version=__version__,
        summary="The workflow history recorded by flowtel, read-only.",
        docs_url=None,  # Swagger UI and ReDoc load scripts from the internet
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.flowtel = state
    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")
    install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(compare.router)
    app.include_router(events.router)
    app.include_router(pages.router)
    app.add_middleware(Guard, token=token)
    return app
