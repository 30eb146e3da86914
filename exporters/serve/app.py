"""The ``flowtel serve`` application: a JSON API, server-rendered pages and a live stream.

:func:`create_app` builds a FastAPI application on a read-only engine
(:func:`~exporters.serve.engine.readonly_engine`) and reads through
:class:`~exporters.query.store.HistoryStore` and :mod:`exporters.serve.queries`. The API
(``/api/runs`` with ``flowtel runs``'s filters and a cursor, ``/api/runs/{run}``,
``/api/stats``, ``/api/health``, ``/api/workflow_history`` in the old table's shape and the
Server-Sent Events of ``/api/events``) is described by ``/openapi.json``; the pages (``/``,
``/runs/{run}``, ``/stats``) are Jinja2 templates with one CSS and one JS file shipped in the
package, and refresh their live parts from ``/partials/...`` when an event arrives. Bad
parameters answer 400/422 with a JSON body, an unknown run 404, a database that cannot be read
503 (pages say so and retry every few seconds); no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import inspect
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from exporters.db.driver_errors import first_line
from exporters.db.engine import display_url, resolve_database_url
from exporters.db.migrations import current_revision
from exporters.ops.durations import DURATION_FORMS
from exporters.ops.durations import parse_when as parse_when_text
from exporters.query.lookup import AmbiguousRunError, RunNotFoundError
from exporters.query.records import RunSummary, StatsReport
from exporters.query.store import HistoryStore
from exporters.serve import views
from exporters.serve.engine import readonly_engine
from exporters.serve.queries import (
    BadCursor,
    RunFilters,
    legacy_rows,
    live_snapshot,
    runs_page,
)
from exporters.serve.security import Guard
from instrumentation import RunStatus, __version__
from instrumentation.redaction import mask_url_credentials

__all__ = ["BadParameter", "create_app", "parse_when"]

_LOG = logging.getLogger("flowtel.serve")
_HERE = Path(__file__).parent
_ACTIVE = ("pending", "running")
_RETRY_S = 5
MAX_PAGE = 500


class BadParameter(ValueError):
    """A query parameter with a value the server cannot use (400, JSON body)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def parse_when(name: str, text: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """``since``/``until`` as ``flowtel runs`` takes them: ISO 8601 (UTC unless it says) or a
    duration back from now (``30m``, ``24h``, ``7d``).

    Raises:
        BadParameter: *text* is neither.
    """
    if text is None or not text.strip():
        return None
    try:
        return parse_when_text(text, now)
    except ValueError:
        raise BadParameter(
            name,
            f"{text[:80]!r} is not a time: give an ISO 8601 date or time such as 2026-11-01, "
            f"or a duration back from now: {DURATION_FORMS}",
        ) from None


def _text(value: str | None) -> str | None:
    return value if value else None


def run_filters(
    status: Annotated[str | None, Query(description="Only runs with this status.")] = None,
    workflow: Annotated[str | None, Query(description="Only runs of this workflow name.")] = None,
    workflow_id: Annotated[str | None, Query(description="Only runs of this workflow id.")] = None,
    server_id: Annotated[str | None, Query(description="Only runs about this server.")] = None,
    device_type: Annotated[str | None, Query(description="Only runs of this device type.")] = None,
    since: Annotated[
        str | None, Query(description="Started at or after: 30m, 24h, 7d, ISO.")
    ] = None,
    until: Annotated[str | None, Query(description="Started before: 30m, 24h, 7d, ISO.")] = None,
) -> RunFilters:
    """``flowtel runs``'s filters from the query string (empty values mean not filtered)."""
    statuses = [s.value for s in RunStatus]
    if status and status not in statuses:
        raise BadParameter("status", f"status must be one of {', '.join(statuses)}")
    return RunFilters(
        status=_text(status),
        workflow=_text(workflow),
        workflow_id=_text(workflow_id),
        server_id=_text(server_id),
        device_type=_text(device_type),
        since=parse_when("since", since),
        until=parse_when("until", until),
    )


Filters = Annotated[RunFilters, Depends(run_filters)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most runs per page.")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page.")]


def followed_run(
    request: Request, run: Annotated[str | None, Query(description="Only this run.")] = None
) -> str | None:
    """The run id the live stream follows (resolved like ``flowtel show``), or ``None``."""
    if run is None:
        return None
    server: _Server = request.app.state.flowtel
    return server.store.get_run(run).run_id


Followed = Annotated[str | None, Depends(followed_run)]


@dataclasses.dataclass
class _Feed:
    """The live stream's latest look at the runs, shared by every open page."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    at: float = float("-inf")
    runs: dict[str, RunSummary] = dataclasses.field(default_factory=dict)
    covered: set[str] = dataclasses.field(default_factory=set)
    active: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass
class _Server:
    engine: Engine
    store: HistoryStore
    database: str
    poll_interval: float


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/openapi.json"


def _reason(exc: BaseException, url: URL) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = f"{type(cause).__name__}: {first_line(cause)}".rstrip(": ")
    if url.password:
        reason = reason.replace(str(url.password), "***")
    return mask_url_credentials(reason)


def create_app(
    database_url: str | URL | None = None,
    *,
    engine: Engine | None = None,
    token: str | None = None,
    poll_interval: float = 0.5,
    label: str | None = None,
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

    Raises:
        DatabaseURLError: the URL cannot be used.
    """
    if engine is None:
        label = label or display_url(resolve_database_url(database_url))
        engine = readonly_engine(database_url)
    server = _Server(engine, HistoryStore(engine), label or display_url(engine.url), poll_interval)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    env = templates.env
    env.filters.update(
        duration=views.fmt_duration,
        rate=views.fmt_rate,
        time=views.fmt_time,
        status_class=views.status_class,
        safe_link=views.safe_link,
        step_error=views.step_error,
    )
    env.globals.update(version=__version__, statuses=[s.value for s in RunStatus])

    app = FastAPI(
        title="flowtel",
        version=__version__,
        summary="The workflow history recorded by flowtel, read-only.",
        docs_url=None,  # Swagger UI and ReDoc load scripts from the internet
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.flowtel = server
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("database", server.database)
        context["root"] = str(request.scope.get("root_path", "")).rstrip("/")
        return templates.TemplateResponse(request, name, context, status_code=status)

    def error(request: Request, status: int, code: str, message: str, **extra: Any) -> Response:
        headers = {"Retry-After": str(_RETRY_S)} if status == 503 else None
        if _wants_json(request):
            body = {"error": code, "message": message, **extra}
            return JSONResponse(body, status_code=status, headers=headers)
        response = page(
            request, "error.html", status, code=code, message=message, retry=status == 503, **extra
        )
        if headers:
            response.headers.update(headers)
        return response

    # --- errors: JSON for the API, a page for pages; never a traceback ---------------------

    @app.exception_handler(BadParameter)
    async def bad_parameter(request: Request, exc: BadParameter) -> Response:
        return error(request, 400, "bad_parameter", exc.message, parameter=exc.name)

    @app.exception_handler(BadCursor)
    async def bad_cursor(request: Request, exc: BadCursor) -> Response:
        return error(request, 400, "bad_parameter", str(exc), parameter="cursor")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            {"parameter": ".".join(str(p) for p in e.get("loc", ())[1:]), "message": e.get("msg")}
            for e in exc.errors()
        ]
        text = "; ".join(f"{p['parameter']}: {p['message']}" for p in problems)
        return error(request, 422, "bad_parameter", text, problems=problems)

    @app.exception_handler(RunNotFoundError)
    async def not_found(request: Request, exc: RunNotFoundError) -> Response:
        return error(request, 404, "run_not_found", str(exc), suggestion=exc.suggestion)

    @app.exception_handler(AmbiguousRunError)
    async def ambiguous(request: Request, exc: AmbiguousRunError) -> Response:
        return error(request, 409, "ambiguous_run", str(exc), candidates=exc.candidates)

    @app.exception_handler(SQLAlchemyError)
    async def unavailable(request: Request, exc: SQLAlchemyError) -> Response:
        reason = _reason(exc, engine.url)
        _LOG.warning("history database unavailable: %s", reason)
        message = f"cannot read the history database {server.database}: {reason}"
        return error(request, 503, "database_unavailable", message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return error(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        _LOG.exception("flowtel serve: unexpected error on %s", request.url.path)
        return error(request, 500, "internal_error", "unexpected error; see the server's log")

    # --- the JSON API ------------------------------------------------------------------------

    @app.get("/api/health", tags=["api"])
    def health() -> Response:
        """Whether the database answers, and its schema revision."""
        try:
            with engine.connect() as conn:
                tables = inspect(conn).has_table("workflow_history")
                revision = current_revision(conn) if tables else None
        except SQLAlchemyError as exc:
            body = {
                "status": "unavailable",
                "database": server.database,
                "reachable": False,
                "message": _reason(exc, engine.url),
            }
            return JSONResponse(body, status_code=503, headers={"Retry-After": str(_RETRY_S)})
        return JSONResponse(
            {
                "status": "ok" if tables else "empty",
                "database": server.database,
                "reachable": True,
                "history_tables": tables,
                "schema_revision": revision,
                "version": __version__,
            }
        )

    @app.get("/api/runs", tags=["api"])
    def api_runs(filters: Filters, limit: Limit = 50, cursor: Cursor = None) -> dict[str, Any]:
        """Runs newest first, with ``flowtel runs``'s filters; follow ``next_cursor``."""
        found = runs_page(engine, filters, limit, cursor)
        return {
            "runs": [run.to_json() for run in found.runs],
            "next_cursor": found.next_cursor,
            "limit": limit,
        }

    @app.get("/api/runs/{run}", tags=["api"])
    def api_run(run: str) -> dict[str, Any]:
        """One run (run id, unique prefix or workflow id), as ``flowtel show --json``."""
        return server.store.get_run(run).to_json()

    @app.get("/api/stats", tags=["api"])
    def api_stats(
        since: str = "7d",
        until: str | None = None,
        workflow: str | None = None,
        by: str | None = None,
        top: Annotated[int, Query(ge=0, le=100)] = 5,
    ) -> dict[str, Any]:
        """Per workflow and step: outcomes, success rate, duration percentiles (``flowtel
        stats --json``)."""
        return _stats(since, until, workflow, by, top).to_json()

    @app.get("/api/workflow_history", tags=["api"])
    def api_workflow_history(
        status: str | None = None,
        workflow_id: str | None = None,
        server_id: str | None = None,
        device_type: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before_id: Annotated[int | None, Query(ge=1)] = None,
    ) -> list[dict[str, Any]]:
        """Rows in the old ``workflow_history`` table's shape, highest ``id`` first."""
        where = {
            "status": status,
            "workflow_id": workflow_id,
            "server_id": server_id,
            "device_type": device_type,
        }
        return legacy_rows(engine, where, limit, before_id)

    @app.get("/api/events", tags=["api"], response_class=EventSourceResponse)
    async def api_events(request: Request, run: Followed = None) -> AsyncIterator[ServerSentEvent]:
        """Server-Sent Events: ``run`` (a RunSummary) whenever a run in progress changes or a
        new run appears; ``unavailable`` while the database cannot be read."""
        seen: dict[str, tuple[Any, ...]] = {}
        follow: set[str] = {run} if run else set()
        first = True
        while not await request.is_disconnected():
            try:
                if run is None:
                    snapshot = await shared_snapshot(follow)
                else:
                    snapshot = await run_in_threadpool(_snapshot, follow, False)
            except SQLAlchemyError as exc:
                yield ServerSentEvent(
                    event="unavailable",
                    data={"message": _reason(exc, engine.url)},
                    retry=_RETRY_S * 1000,
                )
                await asyncio.sleep(max(server.poll_interval, 1.0))
                continue
            if run is not None:
                snapshot = {k: v for k, v in snapshot.items() if k == run}
            for run_id, summary in snapshot.items():
                key = _state(summary)
                if seen.get(run_id) != key and (not first or summary.status in _ACTIVE or run):
                    yield ServerSentEvent(event="run", id=run_id, data=summary.to_json())
                seen[run_id] = key
            if first:
                yield ServerSentEvent(event="ready", data={"watching": len(snapshot)})
                first = False
            follow = {k for k, v in snapshot.items() if v.status in _ACTIVE}
            if run:
                follow.add(run)
            await asyncio.sleep(server.poll_interval)

    def _snapshot(follow: set[str], everything: bool) -> dict[str, RunSummary]:
        with engine.connect() as conn:
            return live_snapshot(conn, follow, newest=20 if everything else 0)

    feed = _Feed()

    async def shared_snapshot(follow: set[str]) -> dict[str, RunSummary]:
        """One look at the database per poll interval, however many pages are open."""
        async with feed.lock:
            fresh = time.monotonic() - feed.at < server.poll_interval * 0.9
            if fresh and follow <= feed.covered:
                return feed.runs
            wanted = feed.active | follow
            runs = await run_in_threadpool(_snapshot, wanted, True)
            feed.runs, feed.at, feed.covered = runs, time.monotonic(), wanted | set(runs)
            feed.active = {k for k, v in runs.items() if v.status in _ACTIVE}
            return runs

    def _stats(
        since: str, until: str | None, workflow: str | None, by: str | None, top: int
    ) -> StatsReport:
        start = parse_when("since", since) or parse_when("since", "7d")
        assert start is not None
        try:
            return server.store.stats(
                since=start, until=parse_when("until", until), workflow=workflow or None,
                by=by or None, top=top,
            )  # fmt: skip
        except ValueError as exc:
            raise BadParameter("by", str(exc)) from None

    # --- the pages -------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def runs_list(
        request: Request, filters: Filters, limit: Limit = 50, cursor: Cursor = None
    ) -> Response:
        found = runs_page(engine, filters, limit, cursor)
        query = {k: v for k, v in request.query_params.items() if k not in ("cursor",) and v}
        return page(
            request, "runs.html", page=found, filters=filters, query=query, first=cursor is None,
            now=dt.datetime.now(dt.UTC), title="Runs",
        )  # fmt: skip

    @app.get("/partials/runs", include_in_schema=False)
    def runs_partial(request: Request, filters: Filters, limit: Limit = 50) -> Response:
        found = runs_page(engine, filters, limit, None)
        return page(request, "_runs_rows.html", page=found, now=dt.datetime.now(dt.UTC))

    @app.get("/runs/{run}", include_in_schema=False)
    def run_page(request: Request, run: str) -> Response:
        detail = server.store.get_run(run)
        return page(request, "run.html", title=detail.workflow_name or detail.workflow_id,
                    **_run_context(detail))  # fmt: skip

    @app.get("/partials/runs/{run}", include_in_schema=False)
    def run_partial(request: Request, run: str) -> Response:
        return page(request, "_run_body.html", **_run_context(server.store.get_run(run)))

    def _run_context(detail: Any) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        rows, axis = views.waterfall(detail, now)
        ms, still_open = views.elapsed_ms(detail.duration_ms, detail.started_at, now)
        return {
            "run": detail,
            "waterfall": rows,
            "axis": axis,
            "duration": views.fmt_duration(ms) + (" so far" if still_open else ""),
            "live": detail.status in _ACTIVE,
            "failed": detail.failed_step,
            "trace_link": views.safe_link(detail.trace_url),
        }

    @app.get("/stats", include_in_schema=False)
    def stats_page(
        request: Request,
        since: str = "7d",
        until: str | None = None,
        workflow: str | None = None,
        by: str | None = None,
        top: Annotated[int, Query(ge=0, le=100)] = 5,
    ) -> Response:
        report = _stats(since, until, workflow, by, top)
        charts = [
            {
                "outcomes": views.outcome_bar(entry.totals),
                "steps": views.hbars(
                    [
                        (
                            f"{s.step_index}. {s.step_name}",
                            s.median_ms,
                            views.fmt_duration(s.median_ms) or "-",
                        )
                        for s in entry.steps
                    ]
                ),
                "failures": views.hbars(
                    [
                        (f"{s.step_index}. {s.step_name}", float(s.failures), str(s.failures))
                        for s in entry.top_failing_steps
                    ],
                    css="status-failed",
                ),
            }
            for entry in report.workflows
        ]
        params = {"since": since, "until": until or "", "workflow": workflow or "", "by": by or ""}
        return page(request, "stats.html", report=report, charts=charts, params=params,
                    title="Stats")  # fmt: skip

    app.add_middleware(Guard, token=token)
    return app


def _state(run: RunSummary) -> tuple[Any, ...]:
    return (run.status, run.steps_completed, run.current_step, run.completed_at, run.total_steps)
