"""The HTML pages: the runs list, one run, the stats; and the partials they refresh from.

``/`` lists runs with ``flowtel runs``'s filters, ``/runs/{run}`` draws one run with its
steps' waterfall, ``/stats`` the outcome and step charts; ``/partials/runs`` and
``/partials/runs/{run}`` are the live parts a page fetches again when an event arrives. None is
in the OpenAPI description.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from exporters.query.records import RunDetail
from exporters.serve import views
from exporters.serve.params import Cursor, Filters, Limit, Top, stats_report
from exporters.serve.queries import runs_page
from exporters.serve.responses import page
from exporters.serve.state import State
from instrumentation.attributes import ACTIVE_RUN_STATUSES

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/")
def runs_list(
    request: Request, state: State, filters: Filters, limit: Limit = 50, cursor: Cursor = None
) -> Response:
    found = runs_page(state.engine, filters, limit, cursor)
    query = {k: v for k, v in request.query_params.items() if k not in ("cursor",) and v}
    # every filter, ``where`` repeated: what the pager and the live refresh ask for again
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor" and v]
    return page(
        request, "runs.html", page=found, filters=filters, query=query, first=cursor is None,
        query_string=urlencode(pairs), now=dt.datetime.now(dt.UTC), title="Runs",
    )  # fmt: skip


@router.get("/partials/runs")
def runs_partial(request: Request, state: State, filters: Filters, limit: Limit = 50) -> Response:
    found = runs_page(state.engine, filters, limit, None)
    return page(request, "_runs_rows.html", page=found, now=dt.datetime.now(dt.UTC))


@router.get("/runs/{run}")
def run_page(request: Request, state: State, run: str) -> Response:
    detail = state.store.get_run(run)
    return page(request, "run.html", title=detail.workflow_name or detail.workflow_id,
                **_run_context(detail))  # fmt: skip


@router.get("/partials/runs/{run}")
def run_partial(request: Request, state: State, run: str) -> Response:
    return page(request, "_run_body.html", **_run_context(state.store.get_run(run)))


def _run_context(detail: RunDetail) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    rows, axis = views.waterfall(detail, now)
    ms, still_open = views.elapsed_ms(detail.duration_ms, detail.started_at, now)
    return {
        "run": detail,
        "waterfall": rows,
        "axis": axis,
        "duration": views.fmt_duration(ms) + (" so far" if still_open else ""),
        "live": detail.status in ACTIVE_RUN_STATUSES,
        "failed": detail.failed_step,
        "trace_link": views.safe_link(detail.trace_url),
    }


@router.get("/stats")
def stats_page(
    request: Request,
    state: State,
    since: str = "7d",
    until: str | None = None,
    workflow: str | None = None,
    by: str | None = None,
    top: Top = 5,
    every: str | None = None,
) -> Response:
    report = stats_report(state.store, since, until, workflow, by, top, every)
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
            "trend": views.trend_bars(entry.trend),
        }
        for entry in report.workflows
    ]
    params = {"since": since, "until": until or "", "workflow": workflow or "", "by": by or "",
              "every": every or ""}  # fmt: skip
    return page(request, "stats.html", report=report, charts=charts, params=params,
                title="Stats")  # fmt: skip
