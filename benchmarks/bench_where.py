"""How fast ``--where KEY=VALUE`` finds runs in a large history, and what its index costs writers.

Run: ``python benchmarks/bench_where.py [--runs 1000000] [--postgres URL] [--no-sqlite] [--reuse]
[--keep] [--queries 200] [--json FILE]``. It loads ``--runs`` synthetic runs (the generator of
:mod:`benchmarks.history_data`; run rows only, as ``--where`` never reads steps) into a SQLite
file and, with ``--postgres``, into a database ``flowtel_bench_where`` on that server (dropped
and created; kept for ``--reuse``), then creates the schema's indexes and the context index the
way migration ``0004`` does (:func:`exporters.db.context_index.install`), timing that step. It
then times ``HistoryStore.list_runs(where=...)`` — the call behind ``flowtel runs --where`` —
for:

* ``server_ip=<ip>``: a selective key (about 16 runs per value in 1,000,000), a different
  value each query, taken from random stored runs;
* ``server_ip=<ip>, device_type=<type>``: two keys, both required;
* ``device_type=g1_c4_gpu``: an unselective key (15 % of the runs), the newest 50;
* ``server_ip=10.99.0.1``: a value no run has;

and prints p50/p95 in milliseconds, the plan of the selective query (EXPLAIN QUERY PLAN on
SQLite, EXPLAIN ANALYZE on PostgreSQL) and, on SQLite, the writer's cost of the context
triggers: the writer's own upsert (:func:`exporters.db.bulk.bulk_upsert_rows`) of 1,000 runs
with their step rows, each run written 11 times as its steps advance (the context unchanged),
with and without the triggers, interleaved, as the median of per-round ratios. The SQLite file
is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from benchmarks.bench_history_queries import (
    RUN_LIST,
    RUN_TIMES,
    create_indexes,
    create_tables,
    with_text_times,
)
from benchmarks.bench_serve import percentile
from benchmarks.history_data import RUN_COLS, STEP_COLS, generate, rows
from exporters.db import context_index
from exporters.db.bulk import bulk_upsert_rows
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema, workflow_history
from exporters.query.store import HistoryStore
from exporters.query.where import where_conditions

BENCH_DB = "flowtel_bench_where"


def recreate(server: str) -> str:
    """Drop and create ``flowtel_bench_where`` on *server*; return its URL."""
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {BENCH_DB}"))
        conn.execute(sa.text(f"CREATE DATABASE {BENCH_DB}"))
    admin.dispose()
    return bench_url(server)


def bench_url(server: str) -> str:
    return sa.make_url(server).set(database=BENCH_DB).render_as_string(hide_password=False)


def load_runs(sqlite_path: str | None, pg_url: str | None, total: int) -> None:
    """Load *total* generated run rows (no steps) into SQLite and PostgreSQL."""
    insert = f"INSERT INTO workflow_history ({RUN_LIST}) VALUES ({','.join('?' * len(RUN_COLS))})"
    lite = sqlite3.connect(sqlite_path) if sqlite_path else None
    if lite is not None:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1000000"):
            lite.execute(f"PRAGMA {pragma}")
    pg = None
    if pg_url is not None:
        import psycopg

        pg = psycopg.connect(
            sa.make_url(pg_url).set(drivername="postgresql").render_as_string(False)
        )
    batch: list[tuple[Any, ...]] = []

    def flush(done: int) -> None:
        if lite is not None:
            lite.executemany(insert, [with_text_times(r, RUN_TIMES) for r in batch])
            lite.commit()
        if pg is not None:
            with pg.cursor().copy(f"COPY workflow_history ({RUN_LIST}) FROM STDIN") as copy:
                for row in batch:
                    copy.write_row(row)
            pg.commit()
        print(f"  loaded {done:,}/{total:,} runs", file=sys.stderr, flush=True)
        batch.clear()

    for done, run in enumerate(generate(total, 365.0, time.time()), start=1):
        batch.append(rows(run)[0])
        if len(batch) == 50_000 or done == total:
            flush(done)
    for connection in (lite, pg):
        if connection is not None:
            connection.close()


def build(urls: list[str], sqlite_path: str | None, pg_url: str | None, runs: int) -> None:
    for url in urls:
        create_tables(url)
    started = time.perf_counter()
    load_runs(sqlite_path, pg_url, runs)
    print(f"loaded in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    for url in urls:
        create_indexes(url)
        engine = make_engine(url, io_timeout=None)
        started = time.perf_counter()
        with engine.begin() as conn:
            context_index.install(conn)
        print(
            f"{engine.dialect.name}: context index built in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text("VACUUM ANALYZE workflow_history"))
        else:
            with engine.begin() as conn:
                conn.execute(sa.text("ANALYZE"))
        engine.dispose()


def sample(engine: sa.Engine, count: int, seed: int = 7) -> list[tuple[str, str]]:
    """(server_ip, device_type) of *count* runs picked at random across the history."""
    with engine.connect() as conn:
        top = conn.execute(sa.select(sa.func.max(workflow_history.c.id))).scalar_one()
        rng = random.Random(seed)
        picked = [rng.randint(1, top) for _ in range(count)]
        query = sa.select(workflow_history.c.metadata).where(workflow_history.c.id.in_(picked))
        found = []
        for (metadata,) in conn.execute(query):
            data = json.loads(metadata) if isinstance(metadata, str) else metadata
            found.append((data["context_data"]["server_ip"], data["context_data"]["device_type"]))
    return found


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return (time.perf_counter() - started) * 1000, result


def plan(engine: sa.Engine, where: dict[str, str]) -> str:
    """The database's plan of the store's query for *where* (newest 50 dated runs)."""
    prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ANALYZE "

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> Any:
        return prefix + statement, parameters

    h = workflow_history.c
    with engine.connect() as conn:
        query = (
            sa.select(h.run_id)
            .where(*where_conditions(conn, where), h.started_at.is_not(None))
            .order_by(h.started_at.desc(), h.id.desc())
            .limit(50)
        )
        sa.event.listen(conn, "before_cursor_execute", explain, retval=True)
        lines = [str(row[-1]) for row in conn.execute(query)]
    return "\n".join(f"    {line}" for line in lines)


def bench(url: str, queries: int) -> dict[str, Any]:
    engine = make_engine(url)
    store = HistoryStore(engine)
    picked = sample(engine, queries)
    cases: dict[str, Callable[[int], dict[str, str]]] = {
        "server_ip (selective)": lambda n: {"server_ip": picked[n % len(picked)][0]},
        "server_ip + device_type": lambda n: {
            "server_ip": picked[n % len(picked)][0],
            "device_type": picked[n % len(picked)][1],
        },
        "device_type (15% of runs)": lambda n: {"device_type": "g1_c4_gpu"},
        "no match": lambda n: {"server_ip": "10.99.0.1"},
    }
    for case in cases.values():  # warm the cache once, as a running server would be
        store.list_runs(where=case(0))
    times: dict[str, list[float]] = {name: [] for name in cases}
    matched: dict[str, list[int]] = {name: [] for name in cases}
    for n in range(queries):  # interleaved: each round runs every case once
        for name, case in cases.items():
            where = case(n)
            ms, found = timed(lambda where=where: store.list_runs(where=where))
            times[name].append(ms)
            matched[name].append(len(found))
    result = {
        "database": engine.dialect.name,
        "runs": engine.connect()
        .execute(sa.select(sa.func.count()).select_from(workflow_history))
        .scalar_one(),
        "cases": {
            name: {
                "p50_ms": round(percentile(values, 0.5), 2),
                "p95_ms": round(percentile(values, 0.95), 2),
                "mean_runs_found": round(sum(matched[name]) / len(matched[name]), 1),
            }
            for name, values in times.items()
        },
        "plan": plan(engine, cases["server_ip (selective)"](0)),
    }
    engine.dispose()
    return result


def trigger_cost(rounds: int = 5, runs: int = 1000, updates: int = 11) -> dict[str, Any]:
    """Seconds the writer's upserts take with and without SQLite's context triggers.

    Shaped like the writer's batches: 50 runs per transaction, each batch one new snapshot of
    every run (a new ``seq`` and ``metadata``, the context unchanged) plus the two step rows
    that moved it on; *updates* batches per run.
    """
    generated = [rows(run) for run in generate(runs, 30.0, time.time(), seed=3)]
    base: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for run_row, step_rows in generated:
        row = dict(zip(RUN_COLS, run_row, strict=True))
        row["metadata"], row["parent_run_id"] = json.loads(row["metadata"]), None
        steps = [dict(zip(STEP_COLS, step, strict=True)) for step in step_rows]
        for step in steps:
            step["logs"] = json.loads(step["logs"]) if step["logs"] else None
        base.append((row, steps))
    seconds: dict[str, list[float]] = {"with triggers": [], "without": []}
    with tempfile.TemporaryDirectory() as directory:
        for n in range(rounds):
            order = list(seconds) if n % 2 == 0 else list(reversed(seconds))
            for label in order:
                engine = make_engine(f"sqlite:///{directory}/w{n}{label[:4]}.db")
                create_schema(engine)
                if label == "without":
                    with engine.begin() as conn:
                        for name in ("insert", "update", "delete"):
                            conn.execute(sa.text(f"DROP TRIGGER workflow_context_{name}"))
                started = time.perf_counter()
                for first in range(0, runs, 50):
                    for seq in range(1, updates + 1):
                        run_rows, step_rows = [], []
                        for row, steps in base[first : first + 50]:
                            snapshot = dict(row["metadata"], current_step_index=seq)
                            run_rows.append(dict(row, seq=seq, metadata=snapshot))
                            step_rows.extend(steps[2 * seq - 2 : 2 * seq])
                        with engine.begin() as conn:
                            bulk_upsert_rows(conn, run_rows, step_rows)
                seconds[label].append(time.perf_counter() - started)
                engine.dispose()
    ratios = sorted(
        w / wo for w, wo in zip(seconds["with triggers"], seconds["without"], strict=True)
    )
    return {
        "run_snapshots": runs * updates,
        "seconds_median": {label: round(statistics.median(v), 3) for label, v in seconds.items()},
        "ratio_with_over_without_median": round(statistics.median(ratios), 3),
        "ratio_min_max": [round(ratios[0], 3), round(ratios[-1], 3)],
    }


def report(results: dict[str, Any]) -> None:
    print(f"\n{results['database']}: {results['runs']:,} runs")
    print(f"  {'case':28} {'p50 ms':>8} {'p95 ms':>8} {'runs found':>11}")
    for name, figures in results["cases"].items():
        print(
            f"  {name:28} {figures['p50_ms']:8.2f} {figures['p95_ms']:8.2f} "
            f"{figures['mean_runs_found']:11.1f}"
        )
    print("  plan of the selective query:")
    print(results["plan"])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs to generate")
    parser.add_argument("--sqlite", metavar="PATH", help="SQLite file (default: a temp file)")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument("--postgres", metavar="URL", help=f"PostgreSQL server (uses {BENCH_DB})")
    parser.add_argument("--reuse", action="store_true", help="query the existing data only")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per case")
    parser.add_argument("--no-trigger-cost", action="store_true", help="skip the writer's cost")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    path = args.sqlite or os.path.join(tempfile.gettempdir(), f"{BENCH_DB}.db")
    urls: list[str] = [] if args.no_sqlite else [f"sqlite:///{path}"]
    pg_url = None
    if args.postgres:
        pg_url = bench_url(args.postgres) if args.reuse else recreate(args.postgres)
        urls.append(pg_url)
    everything: dict[str, Any] = {"databases": []}
    try:
        if not args.reuse:
            if not args.no_sqlite and os.path.exists(path):
                os.remove(path)
            build(urls, None if args.no_sqlite else path, pg_url, args.runs)
        for url in urls:
            results = bench(url, args.queries)
            report(results)
            everything["databases"].append(results)
        if not args.no_trigger_cost:
            cost = trigger_cost()
            everything["sqlite_trigger_cost"] = cost
            print(
                f"\nSQLite writer, {cost['run_snapshots']:,} run snapshots with their steps: "
                f"{cost['seconds_median']} s -> {cost['ratio_with_over_without_median']}x with "
                f"the context triggers (per-round ratios {cost['ratio_min_max']})"
            )
    finally:
        if not args.keep and not args.no_sqlite and os.path.exists(path):
            os.remove(path)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(everything, out, indent=2)


if __name__ == "__main__":
    main()
