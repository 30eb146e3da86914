"""Workers without a database → the genuine collector → ``flowtel ingest`` → SQL, with faults.

The collector built from collector/manifest.yaml (``FLOWTEL_OTELCOL``) runs the shipped
``deploy/collector-ingest.yaml`` on free loopback ports; ``flowtel ingest`` runs as its own
process (``python -m exporters.cli ingest``), killed and restarted at will; workers are child
processes using ``configure(history="collector")``. Every run and step row must be exact: the
runs each worker reports, their statuses, and three steps per completed run. Every process
starts through ``tests.spawn`` and is stopped whatever the test's outcome (skip included).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exporters import workflow_history, workflow_step_history
from tests.collector_support import (
    ROOT,
    Ingest,
    IngestCollector,
    free_ports,
    get_json,
    wait_until,
    zipkin_base,
)
from tests.spawn import spawn

STEPS = ("select_machine", "commission", "validate")

WORKER = """
import json, os, time
from exporters import configure
from instrumentation import workflow_run
handle = configure(history="collector", service_name={service!r}, metrics=False, logs=False)
report = []
for n in range({runs}):
    try:
        with workflow_run("provision_server", context={{"server_id": f"srv-{{n}}"}}) as run:
            for name in {steps!r}:
                with run.step(name):
                    time.sleep({delay})
                    if n % 7 == 3 and name == "commission":
                        raise TimeoutError("still Commissioning")
        report.append((run.run_id, "completed"))
    except TimeoutError:
        report.append((run.run_id, "failed"))
ok = handle.shutdown(timeout_millis=30_000)
print(json.dumps({{"runs": report, "ok": ok}}))
"""


def start_workers(
    collector: IngestCollector, count: int, runs: int, delay: float = 0.0, **env: str
) -> list[subprocess.Popen[str]]:
    children = []
    for n in range(count):
        code = WORKER.format(service=f"worker-{n}", runs=runs, steps=STEPS, delay=delay)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        child_env.update({**collector.worker_env("grpc" if n % 2 else "http/protobuf"), **env})
        child_env["PYTHONPATH"] = str(ROOT)
        child_env.pop("FLOWTEL_DATABASE_URL", None)
        children.append(
            spawn(
                [sys.executable, "-c", code],
                env=child_env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return children


def reports(children: list[subprocess.Popen[str]]) -> dict[str, str]:
    runs: dict[str, str] = {}
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        report = json.loads(out)
        runs.update(dict(report["runs"]))
    return runs


def table(db_url: str) -> tuple[dict[str, Any], list[Any]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as connection:
            runs = {r.run_id: r for r in connection.execute(sa.select(workflow_history))}
            steps = list(connection.execute(sa.select(workflow_step_history)))
    except sa.exc.OperationalError:
        return {}, []
    finally:
        engine.dispose()
    return runs, steps


def assert_exact(db_url: str, expected: dict[str, str], timeout: float = 60) -> None:
    """Every reported run with its status and its step rows, and nothing else."""

    def complete() -> bool:
        runs, steps = table(db_url)
        return (
            len(runs) == len(expected)
            and all(runs[r].status == s for r, s in expected.items() if r in runs)
            and len(steps) == sum(3 if s == "completed" else 2 for s in expected.values())
        )

    try:
        wait_until(complete, timeout, f"{len(expected)} runs in the history")
    finally:
        runs, steps = table(db_url)
    assert {r: row.status for r, row in runs.items()} == expected
    by_run: dict[str, list[Any]] = {}
    for step in steps:
        by_run.setdefault(step.run_id, []).append(step)
    for run_id, status in expected.items():
        ordered = sorted(by_run[run_id], key=lambda s: s.step_index)  # rows land in any order
        names = [s.step_name for s in ordered]
        statuses = [s.status for s in ordered]
        row = runs[run_id]
        if status == "completed":
            assert names == list(STEPS) and statuses == ["completed"] * 3
            assert row.steps_completed == 3 and row.error_type is None
        else:
            assert names == list(STEPS[:2]) and statuses == ["completed", "failed"]
            assert row.error_type == "TimeoutError"
            failed = ordered[-1] if statuses[-1] == "failed" else None
            assert failed is None or failed.error_type == "TimeoutError"
        assert row.metadata["steps"] and row.service_name.startswith("worker-")


@pytest.fixture
def postgres_url(server_database: Any) -> str:
    return str(server_database["postgresql"])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"])
def test_two_workers_through_the_collector_give_exact_rows(
    tmp_path: Path, server_database: Any, backend: str
) -> None:
    db_url = f"sqlite:///{tmp_path}/h.db" if backend == "sqlite" else server_database[backend]
    engine = sa.create_engine(db_url)
    with engine.begin() as connection:
        workflow_step_history.drop(connection, checkfirst=True)
        workflow_history.drop(connection, checkfirst=True)
    engine.dispose()
    (port,) = free_ports(1)
    ingest = Ingest(db_url, port, tmp_path).start()
    collector = IngestCollector(tmp_path, port).start()
    try:
        expected = reports(start_workers(collector, 2, 100))
        assert len(expected) == 200
        assert_exact(db_url, expected)
    finally:
        collector.stop()
        assert ingest.stop() == 0


def test_a_run_is_running_before_its_first_step_ends(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path}/h.db"
    (port,) = free_ports(1)
    ingest = Ingest(db_url, port, tmp_path).start()
    collector = IngestCollector(tmp_path, port).start()
    try:
        (child,) = start_workers(collector, 1, 1, delay=8.0)
        wait_until(lambda: len(table(db_url)[0]) == 1, 15, "the running row")
        runs, steps = table(db_url)
        assert [r.status for r in runs.values()] == ["running"] and steps == []
        assert_exact(db_url, reports([child]))
    finally:
        collector.stop()
        ingest.stop()


def test_ingest_killed_and_restarted_mid_stream_loses_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        workflow_step_history.drop(connection, checkfirst=True)
        workflow_history.drop(connection, checkfirst=True)
    engine.dispose()
    (port,) = free_ports(1)
    ingest = Ingest(postgres_url, port, tmp_path).start()
    collector = IngestCollector(tmp_path, port).start()
    try:
        children = start_workers(collector, 2, 100, delay=0.005)
        wait_until(lambda: len(table(postgres_url)[0]) >= 20, 60, "the first rows")
        ingest.kill()  # SIGKILL, mid-stream
        time.sleep(2.0)
        assert len(table(postgres_url)[0]) < 200, "the stream had ended before the kill"
        ingest.start()
        expected = reports(children)
        assert_exact(postgres_url, expected, timeout=120)
    finally:
        collector.stop()
        ingest.stop()


def test_the_collector_restarted_while_ingest_is_down_loses_nothing(tmp_path: Path) -> None:
    """Also: with the workers' sampler at always_off, every run still reaches the history."""
    db_url = f"sqlite:///{tmp_path}/h.db"
    (port,) = free_ports(1)
    ingest = Ingest(db_url, port, tmp_path)  # not started: ingest is down
    collector = IngestCollector(tmp_path, port).start()
    try:
        expected = reports(start_workers(collector, 2, 50, OTEL_TRACES_SAMPLER="always_off"))
        time.sleep(1.0)  # into the persistent queue
        collector.stop()
        assert table(db_url)[0] == {}
        collector.start()
        ingest.start()
        assert_exact(db_url, expected, timeout=90)
    finally:
        collector.stop()
        ingest.stop()


@pytest.mark.parametrize(("percent", "runs", "most"), [(10, 200, 45), (1, 400, 15)])
def test_trace_sampling_thins_the_backend_never_the_history(
    tmp_path: Path, percent: int, runs: int, most: int
) -> None:
    """About *percent* % of traces reach Zipkin, 100 % of runs reach SQL, and no history-only
    span reaches Zipkin. (Bounds: far outside the binomial's spread.)"""
    zipkin = zipkin_base()
    db_url = f"sqlite:///{tmp_path}/h.db"
    (port,) = free_ports(1)
    ingest = Ingest(db_url, port, tmp_path).start()
    collector = IngestCollector(tmp_path, port, zipkin=f"{zipkin}/api/v2/spans")
    collector.env["FLOWTEL_TRACE_SAMPLING_PERCENT"] = str(percent)
    collector.start()
    try:
        expected = reports(start_workers(collector, 1, runs))
        assert_exact(db_url, expected)
    finally:
        collector.stop()
        ingest.stop()
    traces = get_json(f"{zipkin}/api/v2/traces?serviceName=worker-0&limit=10000&lookback=600000")
    ours = [t for t in traces if any(s.get("tags", {}).get("workflow.run_id") in expected
                                     for s in t)]  # fmt: skip
    least = 5 if percent == 10 else 0
    assert least <= len(ours) <= most, len(ours)
    for trace in ours:
        assert len(trace) == 1 + len(STEPS) or any(
            s.get("tags", {}).get("workflow.step.status") == "failed" for s in trace
        )
        for span in trace:
            assert "flowtel.signal" not in span.get("tags", {})
            assert "flowtel.history_only" not in span.get("tags", {})
