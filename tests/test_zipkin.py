"""End to end: ``flowtel demo`` → OTLP → the real collector → a real tracing backend (Zipkin).

The collector runs otel-collector.yaml plus the test overlay, whose ``zipkin/test`` exporter
feeds the Zipkin server ``FLOWTEL_TEST_ZIPKIN_URL`` names (``eval "$(bash .ci/zipkin.sh
start)"``). Every run the demo records must come back from Zipkin's HTTP API as one trace, its
steps nested under the run's span and the failing step marked as an error, and the row's trace
link must open that trace in Zipkin's UI.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from exporters import workflow_history, workflow_step_history
from tests.collector_support import Collector, get_json, run_child, zipkin_base

DEMO = """
import sys
from exporters.cli import main
sys.argv = ["flowtel", "demo", "--runs", "8", "--seed", "11", "--failure-rate", "0.5",
            "--step-delay", "0", "--db", {url!r}, "--json"]
main()
"""


def zipkin_trace(base: str, trace_id: str, spans: int, timeout: float = 30.0) -> list[Any]:
    """The trace's spans from Zipkin's API, once all *spans* arrived (or what came by then)."""
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        try:
            found = get_json(f"{base}/api/v2/trace/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        if len(found) >= spans:
            break
        time.sleep(0.2)
    return found


def history(url: str) -> tuple[list[Any], dict[str, list[Any]]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        runs = list(connection.execute(sa.select(workflow_history)))
        steps: dict[str, list[Any]] = {}
        for step in connection.execute(sa.select(workflow_step_history)):
            steps.setdefault(step.run_id, []).append(step)
    engine.dispose()
    return runs, steps


def test_demo_runs_are_traces_in_zipkin(tmp_path: Path) -> None:
    base = zipkin_base()
    url = f"sqlite:///{tmp_path}/demo.db"
    collector = Collector(tmp_path, zipkin_intake=f"{base}/api/v2/spans").start()
    env = {**collector.otlp_env(), "FLOWTEL_TRACE_URL_TEMPLATE": base + "/zipkin/traces/{trace_id}"}
    try:
        summary = json.loads(run_child(DEMO.format(url=url), env).stdout)
    finally:
        collector.stop()  # drains the pipelines: every span has been sent to Zipkin
    assert summary["runs"] == 8 and summary["failed"] >= 1
    runs, steps = history(url)
    assert len(runs) == 8
    for run in runs:
        attempts = steps[run.run_id]
        spans = zipkin_trace(base, run.trace_id, 1 + len(attempts))
        assert len(spans) == 1 + len(attempts), run.run_id
        (root,) = [s for s in spans if "parentId" not in s]
        assert root["name"] == "provision_server"
        assert root["tags"]["workflow.run_id"] == run.run_id
        children = [s for s in spans if s is not root]
        assert all(s["parentId"] == root["id"] for s in children)  # steps nested under the run
        assert {s["id"] for s in children} == {a.span_id for a in attempts}
        errors = {s["id"] for s in children if "error" in s.get("tags", {})}
        assert errors == {a.span_id for a in attempts if a.status in ("failed", "retrying")}
        failed = [a for a in attempts if a.status == "failed"]
        if run.status == "failed":
            assert len(failed) == 1 and "error" in root["tags"]
        else:
            assert run.status == "completed" and not failed and "error" not in root["tags"]
        assert run.metadata["trace"]["url"] == f"{base}/zipkin/traces/{run.trace_id}"
    link = runs[0].metadata["trace"]["url"]
    with urllib.request.urlopen(link, timeout=5) as page:  # the row's link opens Zipkin's UI
        assert page.status == 200 and b"<html" in page.read().lower()
