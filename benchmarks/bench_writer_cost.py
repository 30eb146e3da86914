"""The writer's CPU per committed step and committed workflows/s: this tree against older commits.

``python -m benchmarks.bench_writer_cost [--against REV ...] [--db sqlite|postgresql ...]
[--rounds 5] [--workflows 1000] [--json FILE]``

Each subject is a tree: this working tree, and each ``--against`` commit exported with ``git
archive`` into a temporary directory (default: ``ec5612f``, the code the issue measured, and
``HEAD``). Round by round, in an order that alternates, every subject runs
``benchmarks/writer_cost_child.py`` in a fresh interpreter with ``PYTHONPATH`` set to its tree,
on a database of its own (a new SQLite file each time; on PostgreSQL one database per subject,
emptied each round). The table shows, per database and subject, the medians over the rounds of
the writer's CPU per committed step (µs; the background threads' CPU time), the caller's, and
committed workflows/s, and the per-round ratios against the first ``--against`` commit (median
with min-max). CPU time is steadier than wall time on a shared machine; workflows/s is not, so
read it as a ratio only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlalchemy as sa

from benchmarks.common import server_url

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "writer_cost_child.py"
BASELINE = "ec5612f"
"""The commit issue 22 measured ("about 53 µs per step", "~600 workflows/s")."""
FIGURES = ("writer_cpu_us_per_step", "caller_cpu_us_per_step", "workflows_per_s")


def export_commit(rev: str, into: Path) -> Path:
    """The tree of commit *rev*, written under *into* (``git archive``)."""
    target = into / rev.replace("/", "_")
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    tar_path = into / f"{target.name}.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(target, filter="data")
    return target


def _server_database(base: str, tag: str) -> tuple[str, str]:
    name = f"flowtel_bench_cost_{tag}_{os.getpid()}_{random.getrandbits(20):05x}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return sa.make_url(base).set(database=name).render_as_string(hide_password=False), name


def _drop(base: str, name: str) -> None:
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def run_child(tree: Path, url: str, workflows: int) -> dict[str, Any]:
    """One measurement of *tree* in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(tree), "FLOWTEL_SPOOL_DIR": str(tree / ".spool")}
    done = subprocess.run(
        [sys.executable, str(CHILD), "--db", url, "--workflows", str(workflows)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["tree"].startswith(str(tree)):
        raise RuntimeError(f"measured {result['tree']}, not the tree under {tree}")
    return result


def measure(
    backend: str, trees: dict[str, Path], *, rounds: int, workflows: int, scratch: Path
) -> dict[str, Any]:
    """Interleaved rounds of every tree on *backend*; per-round figures and ratios."""
    urls: dict[str, str] = {}
    made: list[str] = []
    base = server_url(backend) if backend != "sqlite" else None
    if backend != "sqlite":
        if base is None:
            raise SystemExit(f"{backend}: set FLOWTEL_TEST_POSTGRES_URL")
        for label in trees:
            urls[label], name = _server_database(base, f"t{len(made)}")
            made.append(name)
    per_round: list[dict[str, dict[str, Any]]] = []
    try:
        for round_ in range(rounds):
            labels = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            figures: dict[str, dict[str, Any]] = {}
            for label in labels:
                url = urls.get(label) or f"sqlite:///{scratch / f'{label}-{round_}.db'}"
                figures[label] = run_child(trees[label], url, workflows)
                print(f"  {backend} round {round_ + 1} {label}: "
                      + ", ".join(f"{k} {figures[label][k]:.1f}" for k in FIGURES),
                      file=sys.stderr)
            per_round.append(figures)
    finally:
        for name in made:
            assert base is not None
            _drop(base, name)
    baseline = next(iter(trees))
    summary: dict[str, Any] = {}
    for label in trees:
        entry: dict[str, Any] = {}
        for key in FIGURES:
            values = [r[label][key] for r in per_round]
            ratios = [r[label][key] / r[baseline][key] for r in per_round]
            entry[key] = {
                "median": statistics.median(values),
                f"ratio_vs_{baseline}": {
                    "median": statistics.median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                },
            }
        summary[label] = entry
    return {"rounds": per_round, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", action="append", help=f"commits (default {BASELINE}, HEAD)")
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="write every figure here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flowtel-cost-") as scratch_dir:
        scratch = Path(scratch_dir)
        trees = {rev: export_commit(rev, scratch / "trees") for rev in args.against or
                 [BASELINE, "HEAD"]}
        trees["working tree"] = ROOT
        results = {
            backend: measure(
                backend, trees, rounds=args.rounds, workflows=args.workflows, scratch=scratch
            )
            for backend in args.db or ["sqlite"]
        }
    baseline = next(iter(trees))
    print(f"{'database':<11} {'tree':<13} {'writer µs/step':>15} {'caller µs/step':>15} "
          f"{'wf/s':>8}   writer CPU ÷ {baseline:<8} wf/s ÷ {baseline}")
    for backend, result in results.items():
        for label, entry in result["summary"].items():
            cpu, rate = entry["writer_cpu_us_per_step"], entry["workflows_per_s"]
            key = f"ratio_vs_{baseline}"
            print(
                f"{backend:<11} {label:<13} {cpu['median']:>15.1f} "
                f"{entry['caller_cpu_us_per_step']['median']:>15.1f} {rate['median']:>8.0f}   "
                f"{cpu[key]['median']:.2f} ({cpu[key]['min']:.2f}-{cpu[key]['max']:.2f})"
                f"{'':>9}{rate[key]['median']:.2f} ({rate[key]['min']:.2f}-{rate[key]['max']:.2f})"
            )
    for backend, result in results.items():
        for label in trees:
            shares = [r[label].get("threads_us_per_step", {}) for r in result["rounds"]]
            names = sorted({name for share in shares for name in share})
            split = ", ".join(
                f"{name} {statistics.median(s.get(name, 0.0) for s in shares):.1f}"
                for name in names
            )
            print(f"  {backend} {label}: per thread, µs per step: {split}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
