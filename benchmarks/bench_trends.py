"""What stats and trends cost from the rollups, against the same calls on the base tables.

Run: ``python benchmarks/bench_trends.py [--runs 200000] [--days 60] [--postgres URL]
[--rounds 15] [--base-rounds 5] [--no-base] [--gc-freeze] [--sqlite-file PATH] [--keep]
[--reuse [--rebuild-rollups]]``. It
loads ``--runs`` synthetic runs (about 23 step rows each, the generator and loader of
:mod:`benchmarks.bench_history_queries`) spread over ``--days`` into a SQLite file and, with
``--postgres``, into ``flowtel_bench_history`` on that server (made anew), builds the rollups
as ``flowtel db upgrade`` does (the time it takes is printed), then times in interleaved
rounds ``compute_stats`` over the last 7 days, the same with ``every=1h``, and the last 90
days with ``every=1d``, each read from the base tables (the baseline: the stats before the
rollups; only ``--base-rounds`` rounds, they take seconds) and from the rollups, and the last
90 days without a trend from the rollups. It prints p50/p95 in milliseconds and each case's
ratio to the first case's p50 (the base tables' 7-day stats, or with ``--no-base`` the
rollups'); nothing is asserted. The issue's target (7 days ≤ 100 ms and 90 days ≤ 300 ms p95
at 1,000,000 runs) needs ``--runs 1000000 --days 365``, which takes a while to load (about 13
minutes into PostgreSQL and 8 more to build its rollups here): ``--keep`` keeps the loaded
databases (the SQLite file at ``--sqlite-file``) and ``--reuse`` measures them again without
loading, their rollups as they are unless ``--rebuild-rollups`` (after a change of their
layout). ``--gc-freeze`` times the rounds a second time after ``gc.freeze()``, as ``flowtel
serve`` runs them: the process's start-up objects out of the cyclic collector's sight, whose
full passes otherwise land in about one call in seven (30 ms each here, timed with
``gc.callbacks``) and set the p95.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_history_queries import (
    BENCH_DB as SERVER_DB,
)
from benchmarks.bench_history_queries import (
    create_indexes,
    create_tables,
    load,
    recreate_database,
)
from benchmarks.history_data import generate
from exporters.db import rollups
from exporters.db.engine import make_engine
from exporters.db.schema import (
    workflow_duration_bucket,
    workflow_history,
    workflow_rollup,
    workflow_step_rollup,
)
from exporters.query.stats import compute_stats

BENCH_DB = "flowtel_bench_trends"  # the SQLite file's name; PostgreSQL: flowtel_bench_history


def server_database(server: str) -> str:
    """The URL of the kept ``flowtel_bench_history`` database on the *server* URL."""
    return sa.make_url(server).set(database=SERVER_DB).render_as_string(hide_password=False)


def cases(engine: sa.Engine, base: bool = True) -> dict[str, Callable[[], Any]]:
    """The calls timed: the base tables' 7-day stats first (the baseline) unless not *base*."""
    now = dt.datetime.now(dt.UTC)
    week, quarter = now - dt.timedelta(days=7), now - dt.timedelta(days=90)
    hour, day = dt.timedelta(hours=1), dt.timedelta(days=1)

    def stats(**kwargs: Any) -> Callable[[], Any]:
        def call() -> Any:
            with engine.connect() as connection:
                return compute_stats(connection, until=now, **kwargs)

        return call

    sources = ("base", "rollups") if base else ("rollups",)
    return (
        {f"stats 7d {source}": stats(since=week, source=source) for source in sources}
        | {
            f"stats 7d --every 1h {source}": stats(since=week, every=hour, source=source)
            for source in sources
        }
        | {
            f"stats 90d --every 1d {source}": stats(since=quarter, every=day, source=source)
            for source in sources
        }
        | {"stats 90d rollups": stats(since=quarter, source="rollups")}
    )


def build_rollups(url: str) -> float:
    """Create the rollup tables and fill them as revision 0007 does; seconds taken."""
    engine = make_engine(url)
    started = time.perf_counter()
    with engine.begin() as connection:
        for table in (workflow_duration_bucket, workflow_rollup, workflow_step_rollup):
            table.drop(connection, checkfirst=True)
            table.create(connection)
        rollups.install(connection)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return time.perf_counter() - started


def measure(
    url: str, rounds: int, base_rounds: int, base: bool = True, frozen: bool = False
) -> dict[str, dict[str, float]]:
    """p50/p95 (ms) of each case over *rounds* interleaved rounds, and its ratio to the
    baseline's p50; *frozen*: after ``gc.freeze()`` (undone at the end)."""
    engine = make_engine(url)
    timed: dict[str, list[float]] = {}
    try:
        calls = cases(engine, base)
        for call in calls.values():
            call()  # warm the cache and the plans
        if frozen:
            gc.collect()
            gc.freeze()
        for round_ in range(rounds):
            for name, call in calls.items():
                if name.endswith(" base") and round_ >= base_rounds:
                    continue  # the base tables take seconds a call: fewer rounds
                started = time.perf_counter()
                call()
                timed.setdefault(name, []).append((time.perf_counter() - started) * 1000)
    finally:
        gc.unfreeze()
        engine.dispose()
    base = statistics.median(next(iter(timed.values())))
    return {
        name: {
            "p50_ms": statistics.median(values),
            "p95_ms": sorted(values)[max(0, round(0.95 * len(values)) - 1)],
            "x_baseline_p50": statistics.median(values) / base,
        }
        for name, values in timed.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server URL")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--base-rounds", type=int, default=5, help="rounds of the base cases")
    parser.add_argument("--no-base", action="store_true", help="time the rollups only")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="also time the rounds after gc.freeze()"
    )
    parser.add_argument(
        "--sqlite-file", default=os.path.join(tempfile.gettempdir(), f"{BENCH_DB}.db")
    )
    parser.add_argument("--keep", action="store_true", help="keep the loaded databases")
    parser.add_argument("--reuse", action="store_true", help="measure databases kept before")
    parser.add_argument("--rebuild-rollups", action="store_true", help="with --reuse")
    args = parser.parse_args()
    path = args.sqlite_file
    if os.path.exists(path) and not args.reuse:
        os.remove(path)
    urls = [f"sqlite:///{path}"]
    pg_url = None
    if args.postgres:
        pg_url = server_database(args.postgres) if args.reuse else recreate_database(args.postgres)
        urls.append(pg_url)
    if not args.reuse:
        for url in urls:
            create_tables(url)
        load(generate(args.runs, args.days, time.time()), path, pg_url, None, args.runs)
    for url in urls:
        if not args.reuse:
            create_indexes(url)
        if args.rebuild_rollups or not args.reuse:
            print(f"{url.split(':')[0]}: rollups built in {build_rollups(url):.1f} s")
    try:
        for url in urls:
            with make_engine(url).connect() as connection:
                held = connection.execute(sa.select(sa.func.count()).select_from(workflow_history))
                print(f"\n{url.split(':')[0]}: {held.scalar():,} runs")
            for frozen in (False, True) if args.gc_freeze else (False,):
                if frozen:
                    print("  after gc.freeze(), as flowtel serve runs:")
                timed = measure(url, args.rounds, args.base_rounds, not args.no_base, frozen)
                for name, figures in timed.items():
                    print(
                        f"  {name:30} p50 {figures['p50_ms']:8.1f} ms"
                        f"  p95 {figures['p95_ms']:8.1f} ms"
                        f"  {figures['x_baseline_p50']:.2f}x the baseline"
                    )
    finally:
        if not args.keep:
            os.remove(path)


if __name__ == "__main__":
    main()
