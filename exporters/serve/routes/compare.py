"""Comparing two runs: ``flowtel diff`` as JSON and as a page.

``/api/runs/{a}/diff/{b}`` is ``flowtel diff A B --json``; ``/api/runs/{run}/diff`` compares a
run with the latest completed run of its workflow started before it. The pages
``/runs/{a}/diff/{b}`` and ``/runs/{run}/compare`` (linked from each run's page) draw the same
comparison: the two runs, the context keys that differ, one row per step with its status,
attempts and duration in each run and the change, slow steps marked, the errors, messages,
inputs and outputs that changed. Runs are named as everywhere (id, unique prefix, workflow
id); an unknown one is 404, a run with no earlier completed run to compare with too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from exporters.query.diff import RunDiff, StepSide, recorded_text
from exporters.query.error_types import short_error_type
from exporters.serve import views
from exporters.serve.responses import page
from exporters.serve.state import State

__all__ = ["router"]

router = APIRouter()


@router.get("/api/runs/{a}/diff/{b}", tags=["api"])
def api_diff(state: State, a: str, b: str) -> dict[str, Any]:
    """Run *b* compared with run *a* (``flowtel diff A B --json``)."""
    return state.store.diff_runs(a, b).to_json()


@router.get("/api/runs/{run}/diff", tags=["api"])
def api_diff_last_good(state: State, run: str) -> dict[str, Any]:
    """*run* compared with the latest completed run of its workflow started before it."""
    return state.store.diff_runs(None, run).to_json()


@router.get("/runs/{a}/diff/{b}", include_in_schema=False)
def diff_page(request: Request, state: State, a: str, b: str) -> Response:
    return _page(request, state.store.diff_runs(a, b))


@router.get("/runs/{run}/compare", include_in_schema=False)
def compare_page(request: Request, state: State, run: str) -> Response:
    return _page(request, state.store.diff_runs(None, run))


def _page(request: Request, result: RunDiff) -> Response:
    rows = []
    for step in result.steps:
        rows.append(
            {
                "step": step,
                "a_duration": views.fmt_duration(step.a.duration_ms) if step.a else "",
                "b_duration": views.fmt_duration(step.b.duration_ms) if step.b else "",
                "change": _signed(step.duration_change_ms),
                "a_error": _error(step.a),
                "b_error": _error(step.b),
                "a_input": recorded_text(step.a.input if step.a else None),
                "b_input": recorded_text(step.b.input if step.b else None),
                "a_output": recorded_text(step.a.output if step.a else None),
                "b_output": recorded_text(step.b.output if step.b else None),
            }
        )
    return page(
        request,
        "diff.html",
        diff=result,
        rows=rows,
        a_duration=views.fmt_duration(result.a.duration_ms),
        b_duration=views.fmt_duration(result.b.duration_ms),
        change=_signed(result.duration_change_ms),
        title=f"Compare {result.b.workflow_id}",
    )


def _error(side: StepSide | None) -> str:
    if side is None or (side.error_type is None and side.error_message is None):
        return "none"
    short = short_error_type(side.error_type) or "error"
    return f"{short}: {side.error_message or ''}".strip()


def _signed(ms: int | None) -> str:
    if ms is None:
        return ""
    return ("+" if ms >= 0 else "-") + views.fmt_duration(abs(ms))
