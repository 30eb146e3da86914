"""How fast ``flowtel serve`` answers on a large history: runs list, run page, stats, live feed.

Run: ``python benchmarks/bench_serve.py [--runs 1000000] [--postgres URL] [--no-sqlite] [--reuse]
[--keep] [--requests 200]``. It loads ``--runs`` synthetic runs (23 step rows each on average;
the generator and loader of :mod:`benchmarks.bench_history_queries` and
:mod:`benchmarks.history_data`) into SQLite and, with ``--postgres``, into a database
``flowtel_bench_serve`` on that server (dropped and created; kept for ``--reuse``), then serves
each with the real application (read-only engine, uvicorn on a loopback port in this process)
and times real HTTP requests with one keep-alive client, interleaved round by round:

* ``GET /`` and ``GET /api/runs`` (the newest 50), ``GET /api/runs?status=failed&since=7d``, and
  a page deep in the history (``cursor`` of the 200th page);
* ``GET /runs/{run}`` and ``GET /api/runs/{run}`` for runs picked across the whole history;
* ``GET /stats`` against ``HistoryStore.stats`` over the same 7-day window (what ``flowtel
  stats --since 7d`` computes), called in the same process: the ratio is the page's cost over
  the command's;
* the live feed: a row updated by another connection until its ``run`` event arrives on
  ``/api/events`` (the pages refresh on that event).

It prints p50/p95 in milliseconds of each, and ratios against the bare ``HistoryStore`` call
behind each page (what HTTP, JSON and the templates add). The SQLite file is deleted unless
``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from click.testing import CliRunner

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bench_history_queries import create_indexes, create_tables, load
from benchmarks.history_data import generate
from exporters.cli import main as cli
from exporters.db.engine import make_engine
from exporters.db.schema import workflow_history
from exporters.query.store import HistoryStore
from exporters.serve.app import create_app

BENCH_DB = "flowtel_bench_serve"


def percentile(values: list[float], q: float) -> float:
    """The *q*-quantile of *values* (linear interpolation)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def recreate(server: str) -> str:
    """Drop and create ``flowtel_bench_serve`` on *server*; return its URL."""
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {BENCH_DB}"))
        conn.execute(sa.text(f"CREATE DATABASE {BENCH_DB}"))
    admin.dispose()
    return bench_url(server)


def bench_url(server: str) -> str:
    return sa.make_url(server).set(database=BENCH_DB).render_as_string(hide_password=False)


class Server:
    """The application on uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def get(client: httpx.Client, path: str) -> Callable[[], Any]:
    def call() -> None:
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
        response.read()

    return call


def live_latency(base: str, url: str, run_ids: list[str], samples: int, poll: float) -> list[float]:
    """Milliseconds from an UPDATE's commit to its ``run`` event on ``/api/events``."""
    writer = make_engine(url)
    found: list[float] = []
    with httpx.Client(timeout=30) as client, client.stream("GET", f"{base}/api/events") as resp:
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("event: ready"):
                break
        rng = random.Random(3)
        for i in range(samples):
            run_id = run_ids[i % len(run_ids)]
            time.sleep(rng.uniform(0, poll))  # commit at any point of the server's poll cycle
            with writer.begin() as conn:
                conn.execute(
                    sa.update(workflow_history)
                    .where(workflow_history.c.run_id == run_id)
                    .values(status="running", steps_completed=i % 23, current_step=f"s{i}",
                            started_at=dt.datetime.now(dt.UTC), completed_at=None)
                )  # fmt: skip
            committed = time.perf_counter()
            for line in lines:
                if line.startswith("data:") and f'"s{i}"' in line:
                    found.append((time.perf_counter() - committed) * 1000)
                    break
    writer.dispose()
    return found


def bench(url: str, requests: int, poll: float) -> dict[str, Any]:
    """Time every request on *url*; return the figures."""
    engine = make_engine(url)
    store = HistoryStore(engine)
    h = workflow_history.c
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(workflow_history)).scalar_one()
        newest = conn.execute(sa.select(sa.func.max(h.started_at))).scalar_one()
        rng = random.Random(7)
        ids = [
            conn.execute(sa.select(h.run_id).where(h.id == rng.randint(1, total))).scalar_one()
            for _ in range(50)
        ]
    since = newest - dt.timedelta(days=7)
    app = create_app(url, poll_interval=poll)
    results: dict[str, Any] = {"runs": total, "backend": engine.dialect.name}
    with Server(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        cursor = None
        for _ in range(199):  # the 200th page of 50: 10,000 runs deep
            cursor = client.get("/api/runs", params={"cursor": cursor} if cursor else {}).json()[
                "next_cursor"
            ]
        week = f"since={since.isoformat().replace('+00:00', 'Z')}"
        pick = itertools.cycle(ids)
        cases: dict[str, Callable[[], Any]] = {
            "store.list_runs() [baseline]": lambda: store.list_runs(),
            "GET / (runs list, HTML)": get(client, "/"),
            "GET /api/runs (JSON)": get(client, "/api/runs"),
            "GET /api/runs?status=failed&since=7d": get(client, f"/api/runs?status=failed&{week}"),
            "GET /api/runs?cursor=<page 200>": get(client, f"/api/runs?cursor={cursor}"),
            "store.get_run(id) [baseline]": lambda: store.get_run(next(pick)),
            "GET /runs/{run} (HTML)": lambda: get(client, f"/runs/{next(pick)}")(),
            "GET /api/runs/{run} (JSON)": lambda: get(client, f"/api/runs/{next(pick)}")(),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for call in cases.values():
            call()  # warm: plans, pools, templates
        gc.collect()  # as flowtel serve does before serving: the start-up heap (app, server,
        gc.freeze()  # client) out of the cyclic collector's sight, undone at the end
        for round_ in range(requests):
            order = list(cases.items())
            if round_ % 2:
                order.reverse()
            for name, call in order:
                times[name].append(timed(call))
        stats_runs = max(3, requests // 20)
        window = ["--since", since.isoformat(), "--until", newest.isoformat()]
        runner = CliRunner()

        def flowtel_stats() -> None:
            result = runner.invoke(cli, ["stats", "--db", url, *window])
            if result.exit_code != 0:
                raise RuntimeError(result.output)

        stats_calls = {
            "flowtel stats (in process) [baseline]": flowtel_stats,
            "store.stats() (its query part)": lambda: store.stats(since=since, until=newest),
            "GET /stats": get(client, f"/stats?{week}&until={newest.isoformat()[:26]}"),
        }
        stats_times: dict[str, list[float]] = {name: [] for name in stats_calls}
        for round_ in range(stats_runs):
            order = list(stats_calls.items())
            if round_ % 2:
                order.reverse()
            for name, call in order:
                stats_times[name].append(timed(call))
        live = live_latency(base, url, ids[:5], max(10, requests // 10), poll)
    app.state.flowtel.engine.dispose()
    engine.dispose()
    for name, values in {**times, **stats_times, "live: commit → SSE event": live}.items():
        results[name] = {"p50_ms": percentile(values, 0.5), "p95_ms": percentile(values, 0.95),
                         "n": len(values)}  # fmt: skip
    base_list = results["store.list_runs() [baseline]"]["p50_ms"]
    base_run = results["store.get_run(id) [baseline]"]["p50_ms"]
    for name in list(times):
        if "baseline" in name:
            continue
        baseline = base_run if "{run}" in name else base_list
        results[name]["x_store_p50"] = results[name]["p50_ms"] / baseline
    results["GET /stats"]["x_flowtel_stats_p50"] = statistics.median(
        s / f
        for s, f in zip(
            stats_times["GET /stats"], stats_times["flowtel stats (in process) [baseline]"],
            strict=True,
        )
    )  # fmt: skip
    gc.unfreeze()
    results["GET /stats"]["x_store_stats_p50"] = (
        results["GET /stats"]["p50_ms"] / results["store.stats() (its query part)"]["p50_ms"]
    )
    return results


def report(results: dict[str, Any]) -> None:
    print(f"\n# {results['backend']}: {results['runs']:,} runs")
    print(f"{'request':44} {'p50 ms':>8} {'p95 ms':>8}  ratio (p50)")
    for name, figures in results.items():
        if not isinstance(figures, dict):
            continue
        ratio = ""
        if "x_store_p50" in figures:
            ratio = f"{figures['x_store_p50']:.2f}x the store call"
        if "x_flowtel_stats_p50" in figures:
            ratio = (
                f"{figures['x_flowtel_stats_p50']:.2f}x flowtel stats, "
                f"{figures['x_store_stats_p50']:.2f}x store.stats"
            )
        print(f"{name:44} {figures['p50_ms']:8.1f} {figures['p95_ms']:8.1f}  {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs to generate")
    parser.add_argument("--days", type=float, default=365.0, help="history span, ending now")
    parser.add_argument("--sqlite", metavar="PATH", help="SQLite file (default: a temp file)")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument("--postgres", metavar="URL", help=f"PostgreSQL server (uses {BENCH_DB})")
    parser.add_argument("--reuse", action="store_true", help="serve the existing data only")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per case")
    parser.add_argument("--poll", type=float, default=0.5, help="the live feed's poll interval")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    path = args.sqlite or os.path.join(tempfile.gettempdir(), f"{BENCH_DB}.db")
    urls: list[str] = [] if args.no_sqlite else [f"sqlite:///{path}"]
    pg_url = None
    if args.postgres:
        pg_url = bench_url(args.postgres) if args.reuse else recreate(args.postgres)
        urls.append(pg_url)
    if not args.reuse:
        if not args.no_sqlite and os.path.exists(path):
            os.remove(path)
        for url in urls:
            create_tables(url)
        started = time.perf_counter()
        generated = generate(args.runs, args.days, time.time())
        load(generated, None if args.no_sqlite else path, pg_url, None, args.runs)
        for url in urls:
            create_indexes(url)
        print(f"built in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    everything = []
    try:
        for url in urls:
            results = bench(url, args.requests, args.poll)
            report(results)
            everything.append(results)
    finally:
        if not args.keep and not args.no_sqlite and os.path.exists(path):
            os.remove(path)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(everything, out, indent=2)


if __name__ == "__main__":
    main()
