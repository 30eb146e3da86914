"""Outage figures: memory while the database is down, and how fast the spool replays.

- **memory**: fresh interpreters (``--child``) record 100,000 events (2,000 workflows of 24
  steps, after a 50-workflow warm-up) and report how much their peak resident memory
  (``VmHWM``) grew. The subject: the database down (a PostgreSQL URL on a closed port) with the
  spool on. Baselines: the same workload on a healthy SQLite database, and the database down
  with the spool off and no step limit, i.e. every row held in memory (what a writer without a
  spool would need; the real ``spool=False`` caps step rows and drops the rest).
- **replay**: a spool of N workflows is produced once (database unreachable), then copied and
  replayed into each database, interleaved with a baseline that upserts the very same records,
  already decoded, in the same chunks (the database's own cost). Figures: rows per second and
  the replay/baseline time ratio, medians over the rounds.

``python benchmarks/bench_outage.py [--events N] [--workflows N] [--rounds N] [--db URL ...]
[--json FILE]``; databases default to SQLite plus PostgreSQL and MariaDB when their URLs are
set (see :mod:`benchmarks.common`). Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import sqlalchemy as sa
from opentelemetry.sdk.trace import TracerProvider

from benchmarks.common import available_backends, database_url, machine_info, median
from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.db.bulk import bulk_upsert_rows
from exporters.db.check import prepare_schema
from exporters.db.schema import metadata
from exporters.spool.files import spool_files, spool_key
from exporters.spool.format import read_header, read_records
from exporters.spool.replay import Replayer, fold_rows
from instrumentation import workflow_run

DOWN = "postgresql+psycopg://flowtel@127.0.0.1:9/nowhere?connect_timeout=1"
STEPS = tuple(f"step_{n:02d}" for n in range(24))  # 50 events per workflow


def _record(provider: TracerProvider, count: int, prefix: str) -> None:
    for n in range(count):
        workflow_id = f"{prefix}-{n}"
        with workflow_run(
            "provision_server", workflow_id=workflow_id, tracer_provider=provider
        ) as run:
            for step in STEPS:
                with run.step(step):
                    pass


def _peak_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def child_memory(mode: str, events: int) -> dict[str, Any]:
    """In a fresh interpreter: peak RSS growth while recording *events* events."""
    spool_root = tempfile.mkdtemp(prefix="flowtel-bench-spool-")
    url = f"sqlite:///{spool_root}/healthy.db" if mode == "healthy" else DOWN
    options: dict[str, Any] = {"spool_dir": spool_root}
    if mode == "in_memory":
        options.update(spool=False, max_pending_steps=10**9)
    processor = WorkflowHistorySpanProcessor(make_engine(url), **options)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    _record(provider, 50, "warmup")
    processor.force_flush(10_000)
    before = _peak_kib()
    started = time.perf_counter()
    _record(provider, events // 50, "srv")
    processor.force_flush(60_000)
    result = {
        "mode": mode,
        "peak_growth_mib": (_peak_kib() - before) / 1024,
        "seconds": time.perf_counter() - started,
        **{k: processor.stats[k] for k in ("rows_spooled", "events_dropped", "steps_dropped")},
    }
    processor.shutdown(1_000)
    shutil.rmtree(spool_root, ignore_errors=True)
    return result


def memory(events: int) -> list[dict[str, Any]]:
    """Each mode in its own interpreter, so no heap carries over."""
    results = []
    for mode in ("healthy", "spool", "in_memory"):
        done = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--events", str(events)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.splitlines()[-1]))
    return results


def make_spool(workflows: int) -> tuple[Path, str, list[tuple[str, dict[str, Any]]]]:
    """Spool *workflows* workflows against an unreachable database; also return the records."""
    root = Path(tempfile.mkdtemp(prefix="flowtel-bench-spool-"))
    processor = WorkflowHistorySpanProcessor(make_engine(DOWN), spool_dir=root)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    _record(provider, workflows, "srv")
    processor.shutdown(60_000)
    assert processor.spool_directory is not None
    records: list[tuple[str, dict[str, Any]]] = []
    for path in spool_files(processor.spool_directory):
        with open(path, "rb") as handle:
            header, offset = read_header(handle, str(path))
            assert header is not None
            for _, value in read_records(handle, str(path), offset):
                decoded = header.decode(value)
                if decoded is not None:
                    records.append(decoded)
    return processor.spool_directory, spool_key(DOWN), records


def replay_round(url: str, source: Path, key: str, records: list[Any]) -> dict[str, float]:
    engine = make_engine(url)
    timings = {}
    for subject in ("replay", "baseline"):
        metadata.drop_all(engine)
        prepare_schema(engine)
        copy = Path(tempfile.mkdtemp(prefix="flowtel-bench-replay-")) / "spool"
        shutil.copytree(source, copy)
        started = time.perf_counter()
        if subject == "replay":
            replayer = Replayer(copy, key)
            while replayer.replay_chunk(engine):
                pass
        else:
            for offset in range(0, len(records), 2_000):
                runs, steps = fold_rows(records[offset : offset + 2_000])
                with engine.begin() as connection:
                    bulk_upsert_rows(connection, runs, steps)
        timings[subject] = time.perf_counter() - started
        shutil.rmtree(copy.parent, ignore_errors=True)
    engine.dispose()
    return timings


def replay(urls: dict[str, str], workflows: int, rounds: int) -> list[dict[str, Any]]:
    source, key, records = make_spool(workflows)
    results = []
    for backend, url in urls.items():
        rounds_run = [replay_round(url, source, key, records) for _ in range(rounds)]
        replay_s = median(r["replay"] for r in rounds_run)
        baseline_s = median(r["baseline"] for r in rounds_run)
        results.append(
            {
                "database": backend,
                "records": len(records),
                "replay_rows_per_s": len(records) / replay_s,
                "baseline_rows_per_s": len(records) / baseline_s,
                "ratio_vs_baseline": replay_s / baseline_s,
            }
        )
    shutil.rmtree(source.parent, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workflows", type=int, default=2_000, help="replayed workflows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", action="append", help="database URL to replay into")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_memory(args.child, args.events)))
        return
    urls = {sa.make_url(u).get_backend_name(): u for u in args.db or []} or {
        b: database_url(b, "outage") for b in available_backends()
    }
    results = {"machine": machine_info(list(urls)), "memory": memory(args.events)}
    for row in results["memory"]:
        print(
            f"memory {row['mode']:<10} {args.events} events: peak RSS +{row['peak_growth_mib']:.1f}"
            f" MiB, {row['rows_spooled']} rows spooled, {row['events_dropped']} dropped"
        )
    results["replay"] = replay(urls, args.workflows, args.rounds)
    for row in results["replay"]:
        print(
            f"replay {row['database']:<10} {row['records']} rows: "
            f"{row['replay_rows_per_s']:.0f} rows/s (plain upsert of the same rows "
            f"{row['baseline_rows_per_s']:.0f} rows/s, ratio {row['ratio_vs_baseline']:.2f})"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2, default=str)


if __name__ == "__main__":
    main()
