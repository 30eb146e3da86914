"""The JSON API: runs with a cursor, one run, stats, health and the old table's rows.

Described by ``/openapi.json`` under the ``api`` tag: ``/api/runs`` (``flowtel runs``'s
filters, newest first, continued by ``next_cursor``), ``/api/runs/{run}`` (``flowtel show
--json``), ``/api/stats`` (``flowtel stats --json``), ``/api/health`` and
``/api/workflow_history`` (the old ``workflow_history`` table's shape).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from exporters.db.driver_errors import describe
from exporters.db.migrations import current_revision
from exporters.serve.live import RETRY_S
from exporters.serve.params import Cursor, Filters, Limit, Top, stats_report
from exporters.serve.queries import legacy_rows, runs_page
from exporters.serve.state import State
from instrumentation import __version__

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["api"])


@router.get("/health")
def health(state: State) -> Response:
    """Whether the database answers, and its schema revision."""
    try:
        with state.engine.connect() as conn:
            tables = inspect(conn).has_table("workflow_history")
            revision = current_revision(conn) if tables else None
    except SQLAlchemyError as exc:
        body = {
            "status": "unavailable",
            "database": state.database,
            "reachable": False,
            "message": describe(exc, state.engine.url),
        }
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_S)})
    return JSONResponse(
        {
            "status": "ok" if tables else "empty",
            "database": state.database,
            "reachable": True,
            "history_tables": tables,
            "schema_revision": revision,
            "version": __version__,
        }
    )


@router.get("/runs")
def api_runs(
    state: State, filters: Filters, limit: Limit = 50, cursor: Cursor = None
) -> dict[str, Any]:
    """Runs newest first, with ``flowtel runs``'s filters; follow ``next_cursor``."""
    found = runs_page(state.engine, filters, limit, cursor)
    return {
        "runs": [run.to_json() for run in found.runs],
        "next_cursor": found.next_cursor,
        "limit": limit,
    }


@router.get("/runs/{run}")
def api_run(state: State, run: str) -> dict[str, Any]:
    """One run (run id, unique prefix or workflow id), as ``flowtel show --json``."""
    return state.store.get_run(run).to_json()


@router.get("/stats")
def api_stats(
    state: State,
    since: str = "7d",
    until: str | None = None,
    workflow: str | None = None,
    by: str | None = None,
    top: Top = 5,
    every: str | None = None,
) -> dict[str, Any]:
    """Per workflow and step: outcomes, success rate, duration percentiles, and with
    ``every=1h`` a trend per interval (``flowtel stats --json``)."""
    return stats_report(state.store, since, until, workflow, by, top, every).to_json()


@router.get("/workflow_history")
def api_workflow_history(
    state: State,
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
    return legacy_rows(state.engine, where, limit, before_id)
