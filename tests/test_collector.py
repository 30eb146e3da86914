"""The genuine OpenTelemetry Collector, run with otel-collector.yaml, receives flowtel's telemetry.

Each test starts the collector built from collector/manifest.yaml (``FLOWTEL_OTELCOL``) with the
production configuration plus the test overlay's file exporter on free ports, runs workflows
through ``configure()`` in a child process, stops the collector (which drains its pipelines)
and asserts on the OTLP JSON it wrote, and on the history rows.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from exporters import workflow_history
from exporters.telemetry.metrics import DURATION_BUCKETS
from tests.collector_support import (
    CONFIG,
    Collector,
    attributes,
    collector_binary,
    run_child,
)

STEPS = ("select_machine", "commission", "validate")
TRACE_URL = "http://traces.example/trace/{trace_id}"
ERROR = 2  # OTLP STATUS_CODE_ERROR

CHILD = """
import json, logging, os
from exporters import configure
from instrumentation import workflow_run
handle = configure(database_url={url!r}, service_name={service!r}, metrics_interval=3600)
run_ids = []
for n in range({runs}):
    try:
        with workflow_run("provision_server", context={{"server_id": f"srv-{{n}}"}}) as run:
            run_ids.append(run.run_id)
            for name in {steps!r}:
                with run.step(name):
                    if n == {fail} and name == "commission":
                        logging.getLogger("provisioner").warning("still commissioning")
                        raise TimeoutError("still Commissioning after 1800 s")
    except TimeoutError:
        pass
handle.force_flush(timeout_millis=10_000)  # exports the metrics once before shutdown does
ok = handle.shutdown(timeout_millis=20_000)
print(json.dumps({{"run_ids": run_ids, "pid": os.getpid(), "ok": ok}}))
"""


def run_workflows(
    tmp_path: Path, env: dict[str, str], runs: int, fail: int = -1, service: str = "e2e"
) -> tuple[dict[str, Any], list[Any]]:
    """Run *runs* workflows in a child with *env*; return its report and the history rows."""
    url = f"sqlite:///{tmp_path}/history.db"
    code = CHILD.format(url=url, service=service, runs=runs, steps=STEPS, fail=fail)
    report = json.loads(run_child(code, env).stdout)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = list(connection.execute(sa.select(workflow_history)))
    engine.dispose()
    return report, rows


def traces_of(collector: Collector, service: str) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    traces: dict[str, list[tuple[dict[str, Any], Any]]] = defaultdict(list)
    for resource, span in collector.spans(service):
        traces[span["traceId"]].append((resource, span))
    return traces


def last_points(collector: Collector, service: str) -> dict[str, list[dict[str, Any]]]:
    """Metric name → the data points of its last export."""
    points = {}
    for name, metrics in collector.metrics(service).items():
        data = metrics[-1]
        kind = next(k for k in ("sum", "gauge", "histogram") if k in data)
        points[name] = data[kind]["dataPoints"]
    return points


def total(points: list[dict[str, Any]], **where: str) -> int:
    selected = [p for p in points if attributes(p.get("attributes")).items() >= where.items()]
    return sum(int(p.get("asInt", p.get("count", 0))) for p in selected)


def test_the_collector_validates_the_production_config() -> None:
    result = subprocess.run(
        [collector_binary(), "validate", f"--config={CONFIG}"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_overlay_validates_and_a_broken_pipeline_does_not(tmp_path: Path) -> None:
    collector = Collector(tmp_path)
    good = subprocess.run(collector.command("validate"), env=collector.env, capture_output=True)
    assert good.returncode == 0, good.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("service:\n  pipelines:\n    traces:\n      exporters: [file/nope]\n")
    bad = subprocess.run(
        [*collector.command("validate"), f"--config={broken}"],
        env=collector.env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "file/nope" in bad.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_traces_and_metrics_reach_the_collector(tmp_path: Path, protocol: str) -> None:
    collector = Collector(tmp_path).start()
    env = {
        **collector.otlp_env(protocol),
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=e2e,service.version=2.0.1",
        "FLOWTEL_TRACE_URL_TEMPLATE": TRACE_URL,
    }
    try:
        report, rows = run_workflows(tmp_path, env, runs=3, fail=1)
    finally:
        collector.stop()
    assert report["ok"] is True
    traces = traces_of(collector, "e2e")
    assert len(traces) == 3  # one trace per run
    by_run: dict[str, list[dict[str, Any]]] = {}
    for entries in traces.values():
        spans = [span for _, span in entries]
        (root,) = [s for s in spans if not s.get("parentSpanId")]
        assert root["name"] == "provision_server"
        steps = sorted(
            (s for s in spans if s is not root), key=lambda s: int(s["startTimeUnixNano"])
        )
        assert [s["name"] for s in steps] == list(STEPS[: len(steps)])
        assert all(s["parentSpanId"] == root["spanId"] for s in steps)  # nested under the run
        run_id = attributes(root["attributes"])["workflow.run_id"]
        assert all(attributes(s["attributes"])["workflow.run_id"] == run_id for s in steps)
        by_run[run_id] = [root, *steps]
        for resource, _ in entries:
            assert resource["service.version"] == "2.0.1"
            assert resource["deployment.environment"] == "e2e"
            assert resource["host.name"] == socket.gethostname()
            assert resource["process.pid"] == report["pid"]
    assert set(by_run) == set(report["run_ids"])
    failed = by_run[report["run_ids"][1]]
    root, select, commission = failed
    assert [s["status"].get("code") for s in failed] == [ERROR, None, ERROR]
    assert commission["status"]["message"].startswith("TimeoutError: still Commissioning")
    events = {e["name"]: attributes(e.get("attributes")) for e in commission["events"]}
    assert events["exception"]["exception.type"] == "TimeoutError"
    assert "Traceback" in events["exception"]["exception.stacktrace"]
    assert events["log"]["log.message"] == "still commissioning"
    assert attributes(commission["attributes"])["workflow.step.status"] == "failed"
    assert attributes(root["attributes"])["workflow.status"] == "failed"
    assert attributes(select["attributes"])["workflow.step.index"] == 1
    assert {row.trace_id for row in rows} == set(traces)  # rows link to the traces
    for row in rows:
        assert row.metadata["trace"]["url"] == TRACE_URL.format(trace_id=row.trace_id)
    points = last_points(collector, "e2e")
    assert total(points["workflow.runs"], **{"workflow.status": "completed"}) == 2
    assert total(points["workflow.runs"], **{"workflow.status": "failed"}) == 1
    (run_failed,) = [
        p
        for p in points["workflow.run.duration"]
        if attributes(p["attributes"])["workflow.status"] == "failed"
    ]
    assert run_failed["explicitBounds"] == list(DURATION_BUCKETS)
    assert total(points["workflow.step.duration"], **{"workflow.step.name": "select_machine"}) == 3
    assert total(points["workflow.runs.active"]) == 0
    assert total(points["flowtel.writer.runs_written"]) >= 3


@pytest.mark.parametrize(
    ("sampler", "ratio", "runs"),
    [("always_off", 0.0, 50), ("always_on", 1.0, 50), ("parentbased_traceidratio", 0.01, 500)],
)
def test_sampling_thins_traces_never_rows_or_metrics(
    tmp_path: Path, sampler: str, ratio: float, runs: int
) -> None:
    """0 %: N rows, no span; 100 %: N traces; 1 %: N rows, exactly the ratio's traces."""
    collector = Collector(tmp_path).start()
    env = {**collector.otlp_env(), "OTEL_TRACES_SAMPLER": sampler}
    if sampler.endswith("ratio"):
        env["OTEL_TRACES_SAMPLER_ARG"] = str(ratio)
    try:
        _, rows = run_workflows(tmp_path, env, runs=runs, service="sampled")
    finally:
        collector.stop()
    assert len(rows) == runs and {row.status for row in rows} == {"completed"}
    bound = TraceIdRatioBased.get_bound_for_rate(ratio)
    expected = {row.trace_id for row in rows if int(row.trace_id, 16) & (2**64 - 1) < bound}
    traces = traces_of(collector, "sampled")
    assert set(traces) == expected
    assert all(len(spans) == 1 + len(STEPS) for spans in traces.values())
    assert len(expected) <= max(runs * ratio * 3, 0) or ratio == 1.0
    points = last_points(collector, "sampled")
    assert total(points["workflow.runs"]) == runs  # metrics count unsampled runs too
    assert total(points["workflow.run.duration"]) == runs
