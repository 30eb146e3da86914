"""How ``flowtel serve`` answers: pages drawn from its templates, and errors in one shape.

:func:`make_templates` sets up the Jinja2 environment (the filters of :mod:`.views`);
:func:`page` draws a template with what every page shows; :func:`error` answers a failure as
JSON under ``/api/`` and as the error page elsewhere (503 adds ``Retry-After``);
:func:`install_error_handlers` maps every exception a route may raise to :func:`error`, so no
traceback ever reaches a client.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from exporters.db.driver_errors import describe
from exporters.query.error_types import short_error_type
from exporters.query.lookup import AmbiguousRunError, RunNotFoundError
from exporters.serve import views
from exporters.serve.live import RETRY_S, TooManyStreams
from exporters.serve.params import BadParameter
from exporters.serve.queries import BadCursor
from exporters.serve.state import serve_state
from instrumentation import RunStatus, __version__

__all__ = ["error", "install_error_handlers", "make_templates", "page"]

_LOG = logging.getLogger("flowtel.serve")
_TEMPLATES = Path(__file__).parent / "templates"


def make_templates() -> Jinja2Templates:
    """The page templates, with :mod:`.views`'s filters and the globals every page uses."""
    templates = Jinja2Templates(directory=str(_TEMPLATES))
    env = templates.env
    env.filters.update(
        duration=views.fmt_duration,
        rate=views.fmt_rate,
        time=views.fmt_time,
        status_class=views.status_class,
        safe_link=views.safe_link,
        step_error=views.step_error,
        pretty_json=views.pretty_json,
        error_class=short_error_type,
    )
    env.globals.update(
        version=__version__, statuses=[s.value for s in RunStatus], hbar_width=views.HBAR_WIDTH
    )
    return templates


def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Template *name* drawn with *context*, the database's label and the proxy's root path."""
    state = serve_state(request)
    context.setdefault("database", state.database)
    context["root"] = str(request.scope.get("root_path", "")).rstrip("/")
    return state.templates.TemplateResponse(request, name, context, status_code=status)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/openapi.json"


def error(request: Request, status: int, code: str, message: str, **extra: Any) -> Response:
    """``{"error": code, "message": ...}`` for the API, the error page for pages."""
    headers = {"Retry-After": str(RETRY_S)} if status == 503 else None
    if _wants_json(request):
        body = {"error": code, "message": message, **extra}
        return JSONResponse(body, status_code=status, headers=headers)
    response = page(
        request, "error.html", status, code=code, message=message, retry=status == 503, **extra
    )
    if headers:
        response.headers.update(headers)
    return response


async def _bad_parameter(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadParameter)
    return error(request, 400, "bad_parameter", exc.message, parameter=exc.name)


async def _bad_cursor(request: Request, exc: Exception) -> Response:
    return error(request, 400, "bad_parameter", str(exc), parameter="cursor")


async def _invalid(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {"parameter": ".".join(str(p) for p in e.get("loc", ())[1:]), "message": e.get("msg")}
        for e in exc.errors()
    ]
    text = "; ".join(f"{p['parameter']}: {p['message']}" for p in problems)
    return error(request, 422, "bad_parameter", text, problems=problems)


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RunNotFoundError)
    return error(request, 404, "run_not_found", str(exc), suggestion=exc.suggestion)


async def _ambiguous(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AmbiguousRunError)
    return error(request, 409, "ambiguous_run", str(exc), candidates=exc.candidates)


async def _unavailable(request: Request, exc: Exception) -> Response:
    state = serve_state(request)
    reason = describe(exc, state.engine.url)
    _LOG.warning("history database unavailable: %s", reason)
    message = f"cannot read the history database {state.database}: {reason}"
    return error(request, 503, "database_unavailable", message)


async def _too_many_streams(request: Request, exc: Exception) -> Response:
    return error(request, 503, "too_many_streams", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = "not_found" if exc.status_code == 404 else "http_error"
    return error(request, exc.status_code, code, str(exc.detail))


async def _crashed(request: Request, exc: Exception) -> Response:
    _LOG.exception("flowtel serve: unexpected error on %s", request.url.path)
    return error(request, 500, "internal_error", "unexpected error; see the server's log")


def install_error_handlers(app: FastAPI) -> None:
    """Answer every exception a route may raise with :func:`error`: JSON or a page."""
    app.add_exception_handler(BadParameter, _bad_parameter)
    app.add_exception_handler(BadCursor, _bad_cursor)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(RunNotFoundError, _not_found)
    app.add_exception_handler(AmbiguousRunError, _ambiguous)
    app.add_exception_handler(SQLAlchemyError, _unavailable)
    app.add_exception_handler(TooManyStreams, _too_many_streams)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _crashed)
