"""Run the benchmark suite: print a table and write JSON to ``benchmarks/results/``.

``python -m benchmarks`` or ``python benchmarks/run.py``; ``--quick`` for a small smoke run;
``--db sqlite --db postgresql`` to choose databases (default: SQLite, plus PostgreSQL and
MariaDB when ``FLOWTEL_BENCH_POSTGRES_URL``/``FLOWTEL_TEST_POSTGRES_URL`` and
``FLOWTEL_BENCH_MYSQL_URL``/``FLOWTEL_TEST_MYSQL_URL`` name them; the suite uses databases
called ``flowtel_bench_*`` on those servers); ``--only caller,throughput`` to run some
comparisons; ``--gc-freeze`` to run them after ``gc.freeze()``. Every figure is a ratio
against a baseline measured in the same process, interleaved; nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import BACKENDS, ROOT, available_backends, machine_info

COMPARISONS = ("caller", "throughput", "writer", "visibility", "memory", "workers", "bulk")


def _runners(backends: list[str], quick: bool) -> dict[str, Callable[[], dict[str, Any]]]:
    from benchmarks import (
        bench_bulk,
        bench_caller,
        bench_memory,
        bench_throughput,
        bench_visibility,
        bench_workers,
        bench_writer,
    )

    return {
        "caller": lambda: bench_caller.run(quick=quick),
        "throughput": lambda: bench_throughput.run(backends, quick=quick),
        "writer": lambda: bench_writer.run(backends, quick=quick),
        "visibility": lambda: bench_visibility.run(backends, quick=quick),
        "memory": lambda: bench_memory.run(quick=quick),
        "workers": lambda: bench_workers.run(backends, quick=quick),
        "bulk": lambda: bench_bulk.run(backends, quick=quick),
    }


def _f(value: Any, pattern: str = "{:.2f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(comparison, database, figure, ratio vs baseline, goal) rows for the summary."""
    rows: list[tuple[str, str, str, str, str]] = []
    c = {name: r for name, r in results["comparisons"].items() if "error" not in r}
    for name, r in results["comparisons"].items():
        if "error" in r:
            rows.append((name, "-", f"FAILED: {r['error'][:80]}", "-", "-"))
    if "caller" in c:
        r = c["caller"]
        s = r["per_step_us"]
        rows.append(
            (
                "1 caller cost/step",
                "sqlite",
                f"{_f(s['flowtel_step']['step_cpu_us'], '{:.1f}')} us vs span "
                f"{_f(s['bare_span']['step_cpu_us'], '{:.1f}')} us vs call "
                f"{_f(s['call']['step_cpu_us'], '{:.2f}')} us",
                f"{_f(r['ratio'])}x span (cpu); "
                f"{_f(r['ratios']['step_wall_vs_bare_span']['median'])}x wall",
                f"< {r['target']}x",
            )
        )
        rows.append(
            (
                "1 same, SDK export",
                "sqlite",
                f"span + BatchSpanProcessor "
                f"{_f(s['bare_span_exported']['step_cpu_us'], '{:.1f}')} us "
                f"({_f(r['ratios']['exported_bare_span_vs_bare_span']['median'])}x span)",
                f"{_f(r['ratios']['step_cpu_vs_exported_bare_span']['median'])}x exported span",
                "-",
            )
        )
        rows.append(
            (
                "1 same, gc.freeze()",
                "sqlite",
                f"{_f(s['flowtel_step_gc_frozen']['step_cpu_us'], '{:.1f}')} us vs span "
                f"{_f(s['bare_span_gc_frozen']['step_cpu_us'], '{:.1f}')} us",
                f"{_f(r['ratios']['step_cpu_vs_bare_span_gc_frozen']['median'])}x span (cpu)",
                "-",
            )
        )
    if "throughput" in c:
        for db, r in c["throughput"]["databases"].items():
            rows.append(
                (
                    "2 throughput",
                    db,
                    f"{_f(r['flowtel_wf_per_s'], '{:.0f}')} wf/s (bare "
                    f"{_f(r['bare_wf_per_s'], '{:.0f}')}, "
                    f"old {_f(r.get('old_wf_per_s'), '{:.0f}')});"
                    f" {_f(r['committed_at_loop_end'], '{:.0%}')} committed at loop end",
                    f"{_f(r['ratio_vs_bare']['median'])}x bare time; "
                    f"{_f(r.get('speedup_vs_old', {}).get('median'), '{:.1f}')}x old",
                    ">= 1000 wf/s, >= 20x old" if db != "mysql" else ">= 20x old",
                )
            )
            rows.append(
                (
                    "2 same, with metrics",
                    db,
                    f"{_f(r['flowtel_metrics_wf_per_s'], '{:.0f}')} wf/s",
                    f"{_f(r['metrics_ratio']['median'])}x the time without",
                    "-",
                )
            )
    if "writer" in c:
        for db, r in c["writer"]["databases"].items():
            rows.append(
                (
                    "3 writer efficiency",
                    db,
                    f"{_f(r['writer_rows_per_s'], '{:.0f}')} rows/s vs Core "
                    f"{_f(r['core_rows_per_s'], '{:.0f}')}",
                    f"{_f(r['ratio']['median'])}x Core",
                    ">= 0.8x",
                )
            )
    if "bulk" in c:
        for db, r in c["bulk"]["databases"].items():
            rows.append(
                (
                    "7 bulk vs insertmanyvalues",
                    db,
                    f"{_f(r['bulk_rows_per_s'], '{:.0f}')} rows/s vs public "
                    f"{_f(r['insertmanyvalues_rows_per_s'], '{:.0f}')}",
                    f"{_f(r['ratio']['median'])}x (public: {'yes' if r['public_path'] else 'no'})",
                    ">= 0.9x: public",
                )
            )
    if "visibility" in c:
        for db, r in c["visibility"]["databases"].items():
            load, idle = r["under_load"], r["idle"]
            rows.append(
                (
                    "4 time to visibility",
                    db,
                    f"p50 {_f(load['p50_s'], '{:.3f}')} s, p99 {_f(load['p99_s'], '{:.3f}')} s "
                    f"at {_f(load['load_wf_per_s'], '{:.0f}')} wf/s load",
                    f"{_f(r['p99_ratio_load_vs_idle'])}x idle p99 "
                    f"({_f(idle['p99_s'], '{:.3f}')} s)",
                    "p99 < 0.5 s",
                )
            )
    if "memory" in c:
        r = c["memory"]
        f, o = r["in_flight"], r["outage"]
        rows.append(
            (
                "5 memory: runs in flight",
                "sqlite",
                f"{_f(f['flowtel_mib_per_1000_runs'])} MiB/1000 runs (bare "
                f"{_f(f['bare_span_mib_per_1000_runs'])})",
                f"{_f(r['ratio'])}x bare spans",
                "flat",
            )
        )
        rows.append(
            (
                "5 memory: outage",
                "down",
                f"{o['events']} events: +{_f(o['outage_first_half_mib'], '{:.1f}')} MiB then "
                f"+{_f(o['outage_second_half_mib'], '{:.1f}')} MiB",
                f"healthy +{_f(o['healthy_total_mib'], '{:.1f}')} MiB; "
                f"{'flat' if o['flat'] else 'growing'}",
                "flat",
            )
        )
    if "workers" in c:
        r = c["workers"]
        rows.append(
            (
                f"6 {r['processes']} workers",
                r["database"],
                f"{_f(r['many_processes_wf_per_s'], '{:.0f}')} wf/s vs one "
                f"{_f(r['one_process_wf_per_s'], '{:.0f}')} ({r['cores']} cores)",
                f"{_f(r['ratio'])}x one process",
                f">= {r['target']:g}x",
            )
        )
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = [("comparison", "db", "figure", "ratio", "goal"), *table(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="flowtel's benchmark suite")
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--db", action="append", choices=BACKENDS, help="database (repeatable)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(COMPARISONS)}")
    parser.add_argument("--output", help="JSON file (default: benchmarks/results/<time>.json)")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="call gc.freeze() after start-up, as docs/operations.md's tuning section suggests",
    )
    args = parser.parse_args(argv)
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    backends = args.db or available_backends()
    chosen = args.only.split(",") if args.only else list(COMPARISONS)
    unknown = set(chosen) - set(COMPARISONS)
    if unknown:
        parser.error(f"unknown comparison(s): {', '.join(sorted(unknown))}")
    runners = _runners(backends, args.quick)
    results: dict[str, Any] = {
        "command": " ".join(
            ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "gc_frozen": args.gc_freeze,
        "backends": backends,
        "machine": machine_info(backends),
        "comparisons": {},
        "seconds": {},
    }
    output = args.output
    if not output:
        folder = os.path.join(ROOT, "benchmarks", "results")
        os.makedirs(folder, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        output = os.path.join(folder, f"{'quick-' if args.quick else ''}{stamp}.json")
    failed = False
    for name in chosen:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            results["comparisons"][name] = runners[name]()
        except Exception as exc:  # recorded, and the other comparisons still run
            traceback.print_exc()
            results["comparisons"][name] = {"title": name, "error": f"{type(exc).__name__}: {exc}"}
            failed = True
        results["seconds"][name] = round(time.perf_counter() - started, 1)
        results["machine"]["load_average_after"] = list(os.getloadavg())
        with open(output, "w") as handle:  # after each comparison: a crash keeps the rest
            json.dump(results, handle, indent=2, default=str)
    m = results["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores, Python {m['python']}, SQLite {m['sqlite']}"
        + "".join(f", {b}: {m[b]}" for b in ("postgresql", "mysql") if m.get(b))
    )
    print_table(results)
    print(f"\nJSON: {output}")
    if failed:
        raise SystemExit(1)
    return results


if __name__ == "__main__":
    main()
