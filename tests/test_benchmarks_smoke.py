"""The benchmark suite's ``--quick`` mode runs on SQLite and writes well-formed JSON.

This checks that every comparison of ``benchmarks/`` runs and reports its figures; it asserts
nothing about how fast anything is (timings on shared machines are noise, and the suite
reports ratios for people to read, not for tests to gate on). It takes a third of the suite's
time, so it carries the ``benchmark`` marker: the default run deselects it and ``.ci/run`` runs
it as a step of its own (``pytest -m benchmark``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.benchmark

ROOT = Path(__file__).resolve().parents[1]
COMPARISONS = ("caller", "throughput", "writer", "visibility", "memory", "workers", "bulk")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench") / "quick.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTEL_BENCH_")}
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--db", "sqlite", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "comparison" in completed.stdout  # the printed table's header
    return dict(json.loads(output.read_text()))


def test_header_names_the_machine(quick_results: dict[str, Any]) -> None:
    assert quick_results["quick"] is True
    assert quick_results["backends"] == ["sqlite"]
    machine = quick_results["machine"]
    for key in ("cpu", "cores", "python", "sqlite", "sqlalchemy", "opentelemetry_sdk"):
        assert machine[key], key


def test_every_comparison_is_present_and_well_formed(quick_results: dict[str, Any]) -> None:
    comparisons = quick_results["comparisons"]
    assert set(comparisons) == set(COMPARISONS)
    for name, result in comparisons.items():
        assert "error" not in result, (name, result.get("error"))
        assert isinstance(result["title"], str) and result["title"], name
        assert isinstance(result["goal"], str) and result["goal"], name
        assert isinstance(result["met"], bool), name


def test_figures_are_numbers(quick_results: dict[str, Any]) -> None:
    c = quick_results["comparisons"]
    steps = c["caller"]["per_step_us"]
    for subject in (
        "call",
        "bare_span",
        "bare_span_exported",
        "flowtel_step",
        "bare_span_gc_frozen",
        "flowtel_step_gc_frozen",
    ):
        assert _number(steps[subject]["step_cpu_us"]) and _number(steps[subject]["step_wall_us"])
    for key in (
        "step_cpu_vs_bare_span",
        "step_wall_vs_bare_span",
        "step_cpu_vs_function_call",
        "step_cpu_vs_exported_bare_span",
        "exported_bare_span_vs_bare_span",
        "step_cpu_vs_bare_span_gc_frozen",
    ):
        assert _number(c["caller"]["ratios"][key]["median"]), key

    throughput = c["throughput"]["databases"]["sqlite"]
    for key in (
        "bare_wf_per_s",
        "flowtel_wf_per_s",
        "flowtel_metrics_wf_per_s",
        "old_wf_per_s",
        "committed_at_loop_end",
    ):
        assert _number(throughput[key]), key
    assert 0 <= throughput["committed_at_loop_end"] <= 1
    for key in ("ratio_vs_bare", "caller_ratio_vs_bare", "speedup_vs_old", "metrics_ratio"):
        assert _number(throughput[key]["median"]), key

    writer = c["writer"]["databases"]["sqlite"]
    assert _number(writer["writer_rows_per_s"]) and _number(writer["core_rows_per_s"])
    assert _number(writer["ratio"]["median"])

    visibility = c["visibility"]["databases"]["sqlite"]
    for phase in ("idle", "under_load"):
        assert _number(visibility[phase]["p50_s"]) and _number(visibility[phase]["p99_s"])
        assert visibility[phase]["p50_s"] <= visibility[phase]["p99_s"]

    memory = c["memory"]
    assert _number(memory["in_flight"]["flowtel_mib_per_1000_runs"])
    assert _number(memory["in_flight"]["bare_span_mib_per_1000_runs"])
    assert _number(memory["outage"]["outage_second_half_mib"])
    assert len(memory["outage"]["samples"]) == 11

    workers = c["workers"]
    assert workers["processes"] == 4
    assert _number(workers["one_process_wf_per_s"]) and _number(workers["many_processes_wf_per_s"])
