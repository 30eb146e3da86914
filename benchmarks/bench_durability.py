"""The durability levels' price: caller cost per step and committed workflows per second.

For each level (``async``, ``run``, ``step``) on each database, rounds interleaved in one
process: *workflows* 23-step workflows through flowtel's context-manager API on a provider
carrying only the history processor at that level, then ``force_flush``. Reported per level:
the caller's wall time per step, the committed workflows per second (from the first start to
the flush that committed the last row), and both as ratios against ``async`` in the same rounds.

``python benchmarks/bench_durability.py [--quick] [--db sqlite --db postgresql]``; nothing here
asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (
    STEPS,
    available_backends,
    database_url,
    flowtel_provider,
    interleave,
    median,
    provision_run,
)

LEVELS = ("async", "run", "step")


def level_round(provider: Any, processor: Any, workflows: int) -> dict[str, float]:
    """One round: caller seconds inside the workflows, and seconds until all committed."""
    caller = 0.0
    started = time.perf_counter()
    for _ in range(workflows):
        begin = time.perf_counter()
        with provision_run(provider, "dur") as run:
            for name in STEPS:
                with run.step(name):
                    pass
        caller += time.perf_counter() - begin
    assert processor.force_flush(120_000), processor.stats
    return {"caller": caller, "total": time.perf_counter() - started}


def measure(backend: str, *, rounds: int, workflows: int) -> dict[str, Any]:
    subjects = {}
    processors = []
    for level in LEVELS:
        url = database_url(backend, f"durability_{level}")
        provider, processor = flowtel_provider(url, otlp=False, durability=level)
        processors.append(processor)
        subjects[level] = lambda p=provider, q=processor: level_round(p, q, workflows)
    results = interleave(rounds, subjects)
    for processor in processors:
        processor.shutdown(30_000)
    steps = workflows * len(STEPS)
    report: dict[str, Any] = {}
    for level in LEVELS:
        report[level] = {
            "caller_us_per_step": median(r["caller"] / steps * 1e6 for r in results[level]),
            "workflows_per_s": median(workflows / r["total"] for r in results[level]),
            "caller_vs_async": median(
                r["caller"] / a["caller"]
                for r, a in zip(results[level], results["async"], strict=True)
            ),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few small rounds (a smoke run)")
    parser.add_argument("--db", action="append", help="sqlite, postgresql, mysql")
    args = parser.parse_args()
    rounds, workflows = (2, 5) if args.quick else (5, 40)
    backends = args.db or available_backends()
    out = {b: measure(b, rounds=rounds, workflows=workflows) for b in backends}
    print(f"{'db':<11} {'level':<6} {'caller/step':>12} {'vs async':>9} {'committed wf/s':>15}")
    for backend, levels in out.items():
        for level, figures in levels.items():
            print(
                f"{backend:<11} {level:<6} {figures['caller_us_per_step']:>9.1f} us "
                f"{figures['caller_vs_async']:>8.1f}x {figures['workflows_per_s']:>15.1f}"
            )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
