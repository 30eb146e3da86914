"""One spelling per rule: statuses from the enums, one JSON encoder, one masked exception line.

The status check reads the code (not the docstrings) of the modules whose rules are spelled
once: the database layer, the read side and the spool replay.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
from pathlib import Path

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from exporters.db.driver_errors import describe
from exporters.db.json import dumps_text, json_ready
from instrumentation import RunStatus, StepStatus, workflow_run
from instrumentation._spans import traceparent_of
from tests.conftest import History

ROOT = Path(__file__).resolve().parent.parent
STATUS_WORDS = {s.value for s in RunStatus} | {s.value for s in StepStatus}
CHECKED = [
    *sorted((ROOT / "exporters" / "db").glob("*.py")),
    *sorted((ROOT / "exporters" / "query").glob("*.py")),
    ROOT / "exporters" / "spool" / "replay.py",
]


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            found.add(id(body[0].value))
    return found


def test_statuses_are_spelled_by_the_enums_only() -> None:
    spelled = []
    for path in CHECKED:
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and node.value in STATUS_WORDS
                and id(node) not in docs
            ):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert spelled == []


def test_an_exception_is_one_masked_line() -> None:
    url = sa.make_url("postgresql://flowtel:s3cret@db/history")
    driver = ValueError("password s3cret refused\nfor postgresql://u:other@h/db\nline 3")
    wrapped = sa.exc.OperationalError("SELECT 1", {}, driver)
    line = describe(wrapped, url)
    assert line == "ValueError: password *** refused"
    assert describe(RuntimeError("see postgresql://u:pw@h/db")) == (
        "RuntimeError: see postgresql://u:[REDACTED]@h/db"
    )
    assert len(describe(RuntimeError("x" * 1000))) <= len("RuntimeError: ") + 300


def test_one_encoder_for_output() -> None:
    when = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    value = {"status": RunStatus.FAILED, "at": when, "naive": dt.datetime(2026, 1, 1), "n": 1}
    expected = {
        "status": "failed",
        "at": "2026-12-02T07:00:00.000000Z",
        "naive": "2026-01-01T00:00:00.000000Z",
        "n": 1,
    }
    assert json.loads(dumps_text(value)) == expected
    assert json_ready(value) == expected


def test_traceparent_is_written_by_the_w3c_propagator(
    history: History, tracer_provider: TracerProvider
) -> None:
    with workflow_run("wf", tracer_provider=tracer_provider) as run:
        written = run.traceparent
        context = run.span.get_span_context()
    history.flush()
    extracted = trace.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": written})
    ).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (context.trace_id, context.span_id)
    assert extracted.trace_flags == context.trace_flags
    (row,) = history.runs(run_id=run.run_id)
    assert row.metadata["trace"]["traceparent"] == written
    assert traceparent_of(trace.INVALID_SPAN_CONTEXT) == ""
