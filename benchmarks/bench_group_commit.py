"""Durable points under ``durability="step"``: flowtel against the old recorder and DBOS.

The same 23-step workflow, rounds interleaved in one process on each database: flowtel with
``durability="step"`` on one thread and on eight threads (each thread its own workflows, one
provider), the old recorder (:mod:`benchmarks.oldway`, one synchronous commit per step, one
thread) and, if the optional ``dbos`` package is installed, DBOS (one ``@DBOS.workflow`` of 23
``@DBOS.step`` functions, its system database on the same server, or a SQLite file). Reported per
subject: committed workflows/s and steps/s (until the last row is committed), the caller's p50/p99
wait per durable point (flowtel: every ``wait_durable``; the others: each synchronous commit or
step), and the issue's ratios per round: one thread against the old recorder and against DBOS,
eight threads against one (committed steps/s). Medians of the rounds, with min/max.

``python benchmarks/bench_group_commit.py [--quick] [--db sqlite --db postgresql]``; DBOS is an
optional benchmark dependency (``pip install dbos==3.4.0``), never imported by the library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from benchmarks.common import (
    STEPS,
    available_backends,
    database_url,
    flowtel_provider,
    interleave,
    machine_info,
    median,
    percentile,
    provision_run,
    ratio_summary,
    reset_tables,
)
from benchmarks.oldway import OldWayRecorder, old_engine

THREADS = 8


class WaitClock:
    """Times every ``wait_durable`` of one processor's writer (the caller's wait per point)."""

    def __init__(self, processor: Any) -> None:
        self.waits: list[float] = []
        self._lock = threading.Lock()
        writer = processor._writer
        original = writer.wait_durable

        def timed(timeout: float) -> bool:
            begin = time.perf_counter()
            try:
                return bool(original(timeout))
            finally:
                elapsed = time.perf_counter() - begin
                with self._lock:
                    self.waits.append(elapsed)

        writer.wait_durable = timed

    def take(self) -> list[float]:
        with self._lock:
            waits, self.waits = self.waits, []
        return waits


def flowtel_round(
    provider: Any, processor: Any, clock: WaitClock, *, threads: int, workflows: int
) -> dict[str, Any]:
    """*threads* threads each run *workflows* workflows; then everything is flushed."""
    reset_tables(processor._writer.engine)
    clock.take()
    before = dict(processor.stats)

    def work(prefix: str) -> None:
        for _ in range(workflows):
            with provision_run(provider, prefix) as run:
                for name in STEPS:
                    with run.step(name):
                        pass

    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(f"gc{t}",)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert processor.force_flush(120_000), processor.stats
    total = time.perf_counter() - started
    stats = processor.stats
    timeouts = int(stats.get("durable_timeouts") or 0) - int(before.get("durable_timeouts") or 0)
    return {
        "total": total,
        "workflows": threads * workflows,
        "waits": clock.take(),
        "durable_timeouts": timeouts,
    }


def old_round(recorder: OldWayRecorder, workflows: int, counter: list[int]) -> dict[str, Any]:
    """The old recorder: one thread, a synchronous commit per statement (each one timed)."""
    recorder.reset()
    waits: list[float] = []
    execute = recorder._execute

    def timed(statement: Any, parameters: dict[str, Any]) -> None:
        begin = time.perf_counter()
        execute(statement, parameters)
        waits.append(time.perf_counter() - begin)

    recorder._execute = timed  # type: ignore[method-assign]
    started = time.perf_counter()
    for _ in range(workflows):
        counter[0] += 1
        recorder.run_workflow(counter[0])
    total = time.perf_counter() - started
    del recorder._execute
    assert recorder.committed_runs() == workflows
    return {"total": total, "workflows": workflows, "waits": waits}


class DbosSubject:
    """DBOS 3.4: one workflow of 23 steps, each step's checkpoint a synchronous commit."""

    def __init__(self, backend: str) -> None:
        from dbos import DBOS  # optional benchmark dependency

        if backend == "sqlite":
            url = database_url("sqlite", "dbos_system")
        else:
            url = database_url(backend, "dbos_system")
        self.dbos_class = DBOS
        self.waits: list[float] = []
        dbos = DBOS(
            config={"name": "flowtel-bench", "system_database_url": url, "run_admin_server": False}
        )
        waits = self.waits

        @DBOS.step()
        def step(name: str) -> str:
            return name

        @DBOS.workflow()
        def provision(server_id: str) -> int:
            for name in STEPS:
                begin = time.perf_counter()
                step(name)
                waits.append(time.perf_counter() - begin)
            return len(STEPS)

        self.provision: Callable[[str], int] = provision
        DBOS.launch()
        self.dbos = dbos
        self.counter = 0

    def round(self, workflows: int) -> dict[str, Any]:
        self.waits.clear()
        started = time.perf_counter()
        for _ in range(workflows):
            self.counter += 1
            assert self.provision(f"dbos-{self.counter}") == len(STEPS)
        total = time.perf_counter() - started
        return {"total": total, "workflows": workflows, "waits": list(self.waits)}

    def close(self) -> None:
        self.dbos_class.destroy(destroy_registry=True)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    waits = [w for r in results for w in r["waits"]]
    return {
        "workflows_per_s": median(r["workflows"] / r["total"] for r in results),
        "steps_per_s": median(r["workflows"] * len(STEPS) / r["total"] for r in results),
        "steps_per_s_range": [
            min(r["workflows"] * len(STEPS) / r["total"] for r in results),
            max(r["workflows"] * len(STEPS) / r["total"] for r in results),
        ],
        "wait_p50_ms": percentile(waits, 0.50) * 1e3,
        "wait_p99_ms": percentile(waits, 0.99) * 1e3,
        "durable_timeouts": sum(int(r.get("durable_timeouts", 0)) for r in results),
    }


def measure(backend: str, *, rounds: int, workflows: int, with_dbos: bool) -> dict[str, Any]:
    url = database_url(backend, "group_commit")
    provider, processor = flowtel_provider(url, otlp=False, durability="step")
    clock = WaitClock(processor)
    old_url = database_url(backend, "group_commit_old")
    recorder = OldWayRecorder(old_engine(old_url))
    counter = [0]
    per_thread = max(1, workflows // 2)
    subjects: dict[str, Callable[[], Any]] = {
        "flowtel_1": lambda: flowtel_round(
            provider, processor, clock, threads=1, workflows=workflows
        ),
        f"flowtel_{THREADS}": lambda: flowtel_round(
            provider, processor, clock, threads=THREADS, workflows=per_thread
        ),
        "oldway": lambda: old_round(recorder, workflows, counter),
    }
    dbos = None
    if with_dbos:
        try:
            dbos = DbosSubject(backend)
            subjects["dbos"] = lambda: dbos.round(workflows)  # type: ignore[union-attr]
        except Exception as exc:  # DBOS is optional: say why it is left out
            print(f"DBOS left out on {backend}: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        results = interleave(rounds, subjects)
    finally:
        processor.shutdown(30_000)
        provider.shutdown()
        recorder.close()
        if dbos is not None:
            dbos.close()
    report: dict[str, Any] = {name: summarize(r) for name, r in results.items()}

    def rate(r: dict[str, Any]) -> float:
        return float(r["workflows"]) / float(r["total"])

    one = [rate(r) for r in results["flowtel_1"]]
    report["ratios"] = {
        "one_thread_vs_oldway_wf": ratio_summary(one, [rate(r) for r in results["oldway"]]),
        f"{THREADS}_threads_vs_one_steps": ratio_summary(
            [rate(r) for r in results[f"flowtel_{THREADS}"]], one
        ),
    }
    if "dbos" in results:
        report["ratios"]["one_thread_vs_dbos_wf"] = ratio_summary(
            one, [rate(r) for r in results["dbos"]]
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few small rounds (a smoke run)")
    parser.add_argument("--db", action="append", help="sqlite, postgresql, mysql")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--no-dbos", action="store_true", help="leave DBOS out")
    args = parser.parse_args()
    rounds, workflows = (2, 4) if args.quick else (args.rounds, args.workflows)
    backends = args.db or available_backends()
    try:
        import dbos  # noqa: F401

        with_dbos = not args.no_dbos
    except ImportError:
        print("dbos is not installed: DBOS left out (pip install dbos==3.4.0)", file=sys.stderr)
        with_dbos = False
    out: dict[str, Any] = {"machine": machine_info(backends)}
    for backend in backends:
        out[backend] = measure(backend, rounds=rounds, workflows=workflows, with_dbos=with_dbos)
    print(f"{'db':<11} {'subject':<10} {'wf/s':>8} {'steps/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for backend in backends:
        for name, f in out[backend].items():
            if name == "ratios":
                continue
            print(
                f"{backend:<11} {name:<10} {f['workflows_per_s']:>8.1f} "
                f"{f['steps_per_s']:>9.0f} {f['wait_p50_ms']:>8.2f} {f['wait_p99_ms']:>8.2f}"
            )
        for name, r in out[backend]["ratios"].items():
            print(f"{backend:<11} {name:<28} {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]")
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
