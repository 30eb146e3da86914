"""Resuming a run elsewhere: the same ``run_id`` and ``traceparent`` continue its trace and row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from exporters import workflow_history, workflow_step_history
from instrumentation import workflow_run
from tests.collector_support import run_child

FIRST = """
import json, os
from exporters import configure
from instrumentation import workflow_run
handle = configure(database_url={url!r}, logs=False)
with workflow_run("provision_server", workflow_id="provision_srv-1", total_steps=2) as run:
    with run.step("select_machine"):
        pass
    assert handle.processor.force_flush(10_000)
    print(json.dumps({{"run_id": run.run_id, "traceparent": run.traceparent}}), flush=True)
    os._exit(0)  # the process is gone mid-run: the run's span never ends here
"""

SECOND = """
import json
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from exporters import configure
from instrumentation import workflow_run
handle = configure(database_url={url!r}, logs=False)
spans = InMemorySpanExporter()
handle.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
with workflow_run(
    "provision_server", workflow_id="provision_srv-1", run_id={run_id!r},
    traceparent={traceparent!r}, total_steps=2,
) as run:
    with run.step("commission", index=2):
        pass
handle.shutdown(10_000)
print(json.dumps([
    {{"name": s.name, "trace_id": f"{{s.context.trace_id:032x}}",
      "span_id": f"{{s.context.span_id:016x}}",
      "parent": f"{{s.parent.span_id:016x}}" if s.parent else None}}
    for s in spans.get_finished_spans()
]))
"""


def read(url: str) -> tuple[list[sa.Row[object]], list[sa.Row[object]]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        runs = list(connection.execute(sa.select(workflow_history)))
        steps = list(
            connection.execute(
                sa.select(workflow_step_history).order_by(workflow_step_history.c.step_index)
            )
        )
    engine.dispose()
    return runs, steps


def test_a_run_resumed_in_another_process_continues_its_trace_and_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/history.db"
    started = json.loads(run_child(FIRST.format(url=url)).stdout)
    _, trace_id, parent_span_id, _ = started["traceparent"].split("-")
    (before,), _ = read(url)
    assert before.status == "running" and before.trace_id == trace_id

    spans = json.loads(run_child(SECOND.format(url=url, **started)).stdout)
    commission, run_span = spans
    assert {s["trace_id"] for s in spans} == {trace_id}  # the same trace
    assert run_span["parent"] == parent_span_id  # a child of the first process's run span
    assert commission["parent"] == run_span["span_id"]

    (after,), steps = read(url)  # the same row, now finished by the second process
    assert after.run_id == started["run_id"] and after.id == before.id
    assert after.status == "completed" and after.trace_id == trace_id
    assert after.seq > before.seq
    assert [(s.step_name, s.status) for s in steps] == [
        ("select_machine", "completed"),
        ("commission", "completed"),
    ]
    assert {s.run_id for s in steps} == {started["run_id"]}


def test_traceparent_makes_the_run_a_child_of_the_remote_span(
    span_exporter: InMemorySpanExporter,
) -> None:
    remote = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with workflow_run("wf", run_id="resumed-1", traceparent=remote) as run, run.step("s"):
        pass
    step, root = span_exporter.get_finished_spans()
    assert format_trace_id(root.context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert root.parent is not None and root.parent.is_remote
    assert format_span_id(root.parent.span_id) == "b7ad6b7169203331"
    assert step.parent is not None and step.parent.span_id == root.context.span_id
    assert run.traceparent.startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert run.run_id == "resumed-1"


@pytest.mark.parametrize(
    "bad", ["", "not-a-traceparent", "00-" + "0" * 32 + "-b7ad6b7169203331-01", "00-xyz-abc-01"]
)
def test_an_invalid_traceparent_is_refused_with_the_expected_shape(bad: str) -> None:
    with pytest.raises(ValueError, match="32 hex trace id"):
        workflow_run("wf", traceparent=bad)
