"""How fast ``flowtel runs`` and ``flowtel stats`` answer on a large history, with query plans.

Run: ``python benchmarks/bench_history_queries.py [--runs 1000000] [--sqlite PATH] [--postgres URL]
[--mysql URL] [--no-sqlite] [--reuse] [--keep]``. It generates ``--runs`` runs (23 step rows each
on average: early failures, cancellations, skipped steps, commissioning polls and IPMI retries)
spread over ``--days`` days up to now, with realistic mixes of workflows, device types, outcomes,
durations, errors, stack traces, log lines and the full ``metadata`` JSON, and loads the same data
into SQLite (``executemany``, journal off while loading), PostgreSQL (``COPY``) and MariaDB/MySQL
(``LOAD DATA LOCAL INFILE``; the unique keys too are added after the load); each server gets a
database ``flowtel_bench_history`` that the script drops, creates and keeps for ``--reuse`` (on
MariaDB the URL's user needs rights on it, as ``GRANT ALL ON `flowtel%`.*`` gives; else root runs
``CREATE DATABASE flowtel_bench_history; GRANT ALL ON flowtel_bench_history.* TO
'flowtel'@'localhost'``, and to ``'flowtel'@'%'`` if that user exists: the script says so). The
schema's own indexes are created after the load. It then times the real ``HistoryStore`` calls
behind ``flowtel runs --status failed --since 7d`` and ``flowtel stats --since 7d`` (and a few
more: first call and median) and prints the plan of every SQL statement they ran (MariaDB:
``ANALYZE``). The SQLite file is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from exporters.database import make_engine
from exporters.demo_workflow import STEPS
from exporters.queries import HistoryStore
from exporters.schema import workflow_history, workflow_step_history

BENCH_DB = "flowtel_bench_history"
RUN_COLS = (
    "run_id", "workflow_id", "workflow_name", "server_id", "device_type", "status", "started_at",
    "completed_at", "updated_at", "steps_completed", "total_steps", "current_step", "duration_ms",
    "error_type", "error_message", "metadata", "trace_id", "span_id", "service_name", "host",
    "pid", "seq",
)  # fmt: skip
STEP_COLS = (
    "run_id", "span_id", "step_index", "step_name", "attempt", "status", "started_at",
    "completed_at", "duration_ms", "message", "error_type", "error_message", "error_stacktrace",
    "logs",
)  # fmt: skip
RUN_LIST, STEP_LIST = ",".join(RUN_COLS), ",".join(STEP_COLS)
RUN_TIMES, STEP_TIMES = (6, 7, 8), (6, 7)  # positions of the timestamps in those tuples
DEVICES = (("s2_c2_small", 35), ("s2_c4_medium", 30), ("a1_c5_large", 20), ("g1_c4_gpu", 15))
Failure = tuple[int, str, str, float]  # step index, error type, message, probability
FAILURES: tuple[Failure, ...] = (
    (4, "TimeoutError", "{srv} still 'Commissioning' after 1800 s", 0.04),
    (16, "ConnectionError", "IPMI address {ipmi} unreachable: no answer in 3 s", 0.025),
    (20, "BiosVerificationError", "BIOS setting 'SR-IOV Support' is 'Disabled'", 0.015),
    (9, "SSHException", "ssh ubuntu@{ip}: connection reset by peer", 0.01),
)
CANCEL_RATE = 0.005
STACK = 'Traceback (most recent call last):\n  File "/srv/flowtel/workflows/provision.py", '
STACK += "line {n}, in execute\n    self.{step}(server)\n" * 6 + "{etype}: {msg}\n"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MYSQL = ("mysql", "mariadb")
TSV = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
PLAN_COLUMNS = ("table", "type", "key", "rows", "r_rows", "filtered", "r_filtered", "Extra")


class Attempt(NamedTuple):
    """One step attempt of a generated run (times in epoch seconds; no end while running)."""

    index: int
    name: str
    attempt: int
    status: str
    start: float
    end: float | None
    failure: Failure | None


class Run(NamedTuple):
    """One generated run: its number, start, server, device type, IP, status, attempts, ids."""

    n: int
    start: float
    server: str
    device: str
    ip: str
    status: str
    attempts: list[Attempt]
    bits: int


def _attempts(rng: random.Random, start: float, device: str, failure: Failure | None,
              cancelled: bool, now: float) -> list[Attempt]:  # fmt: skip
    """The step attempts of one run, stopping at its failure, cancellation or now."""
    found: list[Attempt] = []
    at, slow = start, 1.3 if device == "g1_c4_gpu" else 1.0
    for index, spec in enumerate(STEPS, start=1):
        extra = int(rng.expovariate(1.0) * 1.4) if index == 4 else int(rng.random() < 0.25)
        tries = 1 + extra if index in (4, 16) else 1  # commissioning polls, IPMI retries
        for attempt in range(1, tries + 1):
            took = spec.weight * slow * rng.lognormvariate(3.3, 0.5)
            status, failed = "completed" if attempt == tries else "retrying", None
            if index == 13 and device.startswith("a1"):
                status, took = "skipped", 0.01
            if attempt == tries and failure is not None and failure[0] == index:
                status, failed = "failed", failure
            end: float | None = at + took
            if at + took > now - 60:
                status, end, failed = "running", None, None
            found.append(Attempt(index, spec.name, attempt, status, at, end, failed))
            at += took + 0.2
            if status in ("running", "failed"):
                return found
        if cancelled and index == 12:
            break
    return found


def generate(runs: int, days: float, now: float, seed: int = 42) -> Iterator[Run]:
    """Yield *runs* runs started at uniformly random times over the *days* before *now*."""
    rng = random.Random(seed)
    starts = sorted(rng.uniform(now - days * 86400, now) for _ in range(runs))
    for n, t in enumerate(starts):
        server = f"srv-{rng.randint(1, 60000):05d}"
        device = rng.choices([d for d, _ in DEVICES], [w for _, w in DEVICES])[0]
        ip = f"10.20.{rng.randint(1, 254)}.{rng.randint(10, 250)}"
        draw, failure = rng.random(), None
        for candidate in FAILURES:
            if draw < candidate[3]:
                failure = candidate
                break
            draw -= candidate[3]
        cancelled = failure is None and draw < CANCEL_RATE
        attempts = _attempts(rng, t, device, failure, cancelled, now)
        last = attempts[-1].status
        status = last if last in ("running", "failed") else "completed"
        status = "cancelled" if cancelled and status == "completed" else status
        yield Run(n, t, server, device, ip, status, attempts, rng.getrandbits(128))


def stamp(seconds: float | None) -> dt.datetime | None:
    """Epoch seconds as an aware UTC datetime."""
    return None if seconds is None else EPOCH + dt.timedelta(seconds=seconds)


def rows(run: Run) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The ``workflow_history`` row and the step rows of *run*, in RUN_COLS / STEP_COLS order."""
    hexed = f"{run.bits:032x}"
    run_id = f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
    workflow = ("provision_server",) * 16 + ("rebuild_server",) * 3 + ("decommission_server",)
    name = workflow[run.n % 20]
    values = {"srv": run.server, "ip": run.ip, "ipmi": run.ip.replace("10.20", "10.30")}
    steps, summary, errors = [], {}, []
    for a in run.attempts:
        start, end = stamp(a.start), stamp(a.end)
        error = a.failure[2].format(**values) if a.failure else None
        error_type = a.failure[1] if a.failure else None
        stack = logs = None
        if a.failure:
            stack = STACK.format(n=a.index * 7, step=a.name, etype=error_type, msg=error)
            line = {"at": str(end), "severity": "warning", "logger": "maas", "message": error}
            logs = json.dumps([line])
            errors.append({"step": a.name, "type": error_type, "message": error})
        span = (run.bits >> 64) ^ (len(steps) * 0x9E3779B97F4A7C15) & (2**64 - 1)
        ms = None if a.end is None else int((a.end - a.start) * 1000)
        message = error or f"{a.name} done"
        steps.append(
            (run_id, f"{span:016x}", a.index, a.name, a.attempt, a.status, start, end, ms,
             message, error_type, error, stack, logs)
        )  # fmt: skip
        summary[a.index] = {
            "index": a.index, "name": a.name, "status": a.status, "attempts": a.attempt,
            "started_at": str(start), "completed_at": str(end), "error": error,
        }  # fmt: skip
    last = run.attempts[-1]
    end_s = last.end if run.status != "running" else None
    trace_id, span_id = f"{run.bits * 0x9E3779B97F4A7C15 % 2**128:032x}", f"{run.bits >> 64:016x}"
    metadata = {
        "workflow_name": name, "description": "Provision a bare-metal server",
        "current_step_name": last.name, "current_step_index": last.index,
        "steps": [summary.get(i, {"index": i, "name": spec.name, "status": "pending"})
                  for i, spec in enumerate(STEPS, start=1)],
        "context_data": {"server_id": run.server, "device_type": run.device, "server_ip": run.ip,
                         "ipmi_ip": values["ipmi"], "ipmi_password": "[REDACTED]"},
        "timestamps": {"started_at": str(stamp(run.start)), "completed_at": str(stamp(end_s))},
        "errors": errors,
        "trace": {"trace_id": trace_id, "span_id": span_id,
                  "traceparent": f"00-{trace_id}-{span_id}-01", "url": None},
    }  # fmt: skip
    failed = errors[-1] if run.status == "failed" else None
    error_message = failed and f"step '{last.name}' failed: {failed['type']}: {failed['message']}"
    updated = end_s or last.start
    done = sum(1 for s in summary.values() if s["status"] in ("completed", "skipped"))
    return (
        run_id, f"{name}_{run.server}", name, run.server, run.device, run.status,
        stamp(run.start), stamp(end_s), stamp(updated), done, len(STEPS), last.name,
        None if end_s is None else int((end_s - run.start) * 1000),
        failed["type"] if failed else None, error_message if failed else None,
        json.dumps(metadata), trace_id, span_id, "provisioner", f"worker-{run.n % 12}",
        1000 + run.n % 977, int(updated * 1_000_000),
    ), steps  # fmt: skip


def sqlite_text(row: tuple[Any, ...], positions: tuple[int, ...]) -> tuple[Any, ...]:
    """*row* with its timestamps as flowtel's SQLite text (naive UTC, microseconds)."""
    cells = list(row)
    for i in positions:
        if cells[i] is not None:
            cells[i] = cells[i].replace(tzinfo=None).isoformat(" ", "microseconds")
    return tuple(cells)


def unique_keys(table: sa.Table) -> list[sa.UniqueConstraint]:
    """The UNIQUE constraints of *table* (``unique=True`` columns)."""
    return [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)]


def without_unique_keys(table: sa.Table) -> sa.Table:
    """A copy of *table* without its UNIQUE constraints (InnoDB: secondary indexes too)."""
    copy = table.to_metadata(sa.MetaData())
    for constraint in unique_keys(copy):
        copy.constraints.remove(constraint)
    return copy


def create_tables(url: str) -> None:
    """Drop and create both tables without their secondary indexes (created after the load)."""
    engine = make_engine(url)
    mysql = engine.dialect.name in MYSQL
    with engine.begin() as conn:
        for table in (workflow_step_history, workflow_history):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table.name}"))
            conn.execute(CreateTable(without_unique_keys(table) if mysql else table))
    engine.dispose()


def mysql_add_keys(table: sa.Table) -> str:
    """One ALTER TABLE adding *table*'s unique keys and indexes: InnoDB reads the rows once."""
    keys = [("UNIQUE", key.columns) for key in unique_keys(table)]
    keys += [(f"INDEX {index.name}", index.columns) for index in table.indexes]
    adds = ", ".join(f"ADD {kind} ({', '.join(c.name for c in cols)})" for kind, cols in keys)
    return f"ALTER TABLE {table.name} {adds}"


def create_indexes(url: str) -> None:
    """Create the schema's indexes, exactly as ``create_schema`` declares them."""
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in (workflow_history, workflow_step_history):
            if engine.dialect.name in MYSQL:
                conn.execute(sa.text(mysql_add_keys(table)))
                conn.execute(sa.text(f"ANALYZE TABLE {table.name}")).all()
                continue
            for index in table.indexes:
                conn.execute(CreateIndex(index))
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()


def tsv_line(row: tuple[Any, ...], times: tuple[int, ...]) -> str:
    """*row* as a line of ``LOAD DATA``'s default format (tabs, backslash escapes, ``\\N``)."""
    cells = (
        "\\N" if cell is None else cell.translate(TSV) if isinstance(cell, str) else str(cell)
        for cell in sqlite_text(row, times)
    )
    return "\t".join(cells) + "\n"


def mysql_connect(url: str) -> Any:
    """A PyMySQL connection to *url* that may send ``LOAD DATA LOCAL INFILE`` files."""
    import pymysql

    args = sa.make_url(url).translate_connect_args(username="user")
    connection = pymysql.connect(**args, local_infile=True, charset="utf8mb4")
    with connection.cursor() as cursor:
        cursor.execute("SET unique_checks=0, foreign_key_checks=0")
    return connection


def mysql_load(connection: Any, table: str, columns: str, lines: Iterator[str]) -> None:
    """Load *lines* into *table* through a temporary file and ``LOAD DATA LOCAL INFILE``."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".tsv") as file:
        file.writelines(lines)
        file.flush()
        with connection.cursor() as cursor:
            cursor.execute(
                f"LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4 ({columns})",
                (file.name,),
            )


def load(generated: Iterator[Run], sqlite_path: str | None, pg_url: str | None,
         mysql_url: str | None, total: int) -> None:  # fmt: skip
    """Load the same runs into SQLite (executemany), PostgreSQL (COPY), MariaDB (LOAD DATA)."""
    run_sql = f"INSERT INTO workflow_history ({RUN_LIST}) VALUES ({','.join('?' * 22)})"
    step_sql = f"INSERT INTO workflow_step_history ({STEP_LIST}) VALUES ({','.join('?' * 14)})"
    lite = sqlite3.connect(sqlite_path) if sqlite_path else None
    if lite is not None:
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-4000000"):
            lite.execute(f"PRAGMA {pragma}")
    pg = None
    if pg_url is not None:
        import psycopg

        pg = psycopg.connect(
            sa.make_url(pg_url).set(drivername="postgresql").render_as_string(False)
        )
    my = mysql_connect(mysql_url) if mysql_url is not None else None
    batch: list[tuple[tuple[Any, ...], list[tuple[Any, ...]]]] = []

    def flush(done: int) -> None:
        if lite is not None:
            lite.executemany(run_sql, [sqlite_text(r, RUN_TIMES) for r, _ in batch])
            lite.executemany(step_sql, [sqlite_text(s, STEP_TIMES) for _, ss in batch for s in ss])
            lite.commit()
        if pg is not None:
            with pg.cursor().copy(f"COPY workflow_history ({RUN_LIST}) FROM STDIN") as c:
                for run_row, _ in batch:
                    c.write_row(run_row)
            with pg.cursor().copy(f"COPY workflow_step_history ({STEP_LIST}) FROM STDIN") as c:
                for step_row in (step for _, steps in batch for step in steps):
                    c.write_row(step_row)
            pg.commit()
        if my is not None:
            step_lines = (tsv_line(s, STEP_TIMES) for _, ss in batch for s in ss)
            mysql_load(my, "workflow_history", RUN_LIST, (tsv_line(r, RUN_TIMES) for r, _ in batch))
            mysql_load(my, "workflow_step_history", STEP_LIST, step_lines)
            my.commit()
        print(f"  loaded {done:,}/{total:,} runs", file=sys.stderr, flush=True)
        batch.clear()

    for done, run in enumerate(generated, start=1):
        batch.append(rows(run))
        if len(batch) == 20_000 or done == total:
            flush(done)
    for connection in (lite, pg, my):
        if connection is not None:
            connection.close()


def explain(engine: sa.Engine, statement: str, parameters: Any) -> str:
    """The plan of *statement*: EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on PostgreSQL."""
    if engine.dialect.name in MYSQL and engine.dialect.is_mariadb:
        return explain_mysql(engine, statement, parameters)
    if engine.dialect.name in MYSQL:  # MySQL 8: a tree in one cell
        with engine.connect() as conn:
            found = conn.exec_driver_sql("EXPLAIN ANALYZE " + statement, parameters)
            return "\n".join(f"    {line}" for line in found.scalar_one().splitlines())
    sqlite = engine.dialect.name == "sqlite"
    prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN (ANALYZE, BUFFERS) "
    with engine.connect() as conn:
        found = conn.exec_driver_sql(prefix + statement, parameters)
        return "\n".join(f"    {row[3] if sqlite else row[0]}" for row in found)


def explain_mysql(engine: sa.Engine, statement: str, parameters: Any) -> str:
    """MariaDB's ``ANALYZE`` of *statement* (its EXPLAIN plus the rows actually read)."""
    with engine.connect() as conn:
        found = conn.exec_driver_sql("ANALYZE " + statement, parameters).mappings().all()
    return "\n".join(
        "    " + " ".join(f"{c}={row[c]}" for c in PLAN_COLUMNS if row.get(c) is not None)
        for row in found
    )


def measure(engine: sa.Engine, label: str, call: Callable[[], Any], repeat: int) -> None:
    """Time *call* (the first call and the median of *repeat*), then print its plans."""
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    sa.event.remove(engine, "before_cursor_execute", capture)
    size = len(result) if isinstance(result, list) else len(result.workflows)
    median = statistics.median(times)
    print(f"\n## {label}: first {times[0]:.3f}s, median {median:.3f}s ({size} results)")
    for statement, parameters in captured[: len(captured) // repeat]:
        print("  " + " ".join(statement.split())[:300], parameters)
        print(explain(engine, statement, parameters))


def run_queries(url: str, repeat: int) -> None:
    """Time the history queries on *url* and print their plans."""
    engine = make_engine(url)
    store = HistoryStore(engine)
    h = workflow_history.c
    with engine.connect() as conn:
        count = sa.select(sa.func.count())
        runs = conn.execute(count.select_from(workflow_history)).scalar_one()
        steps = conn.execute(count.select_from(workflow_step_history)).scalar_one()
        newest = conn.execute(sa.select(sa.func.max(h.started_at))).scalar_one()
        middle = sa.select(h.run_id, h.server_id).order_by(h.id).offset(runs // 2).limit(1)
        some = conn.execute(middle).one()
    print(f"\n# {engine.dialect.name}: {runs:,} runs, {steps:,} step rows")
    week = {"since": newest - dt.timedelta(days=7), "until": newest}
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("runs --status failed --since 7d (limit 50)",
         lambda: store.list_runs(status="failed", since=week["since"])),
        ("stats --since 7d", lambda: store.stats(**week)),
        ("runs (newest 50)", lambda: store.list_runs()),
        ("runs --server ID", lambda: store.list_runs(server_id=some.server_id)),
        ("runs --device-type g1_c4_gpu --since 7d",
         lambda: store.list_runs(device_type="g1_c4_gpu", since=week["since"])),
        ("stats --since 7d --by device_type", lambda: store.stats(**week, by="device_type")),
        ("stats --since 7d --by server_ip", lambda: store.stats(**week, by="server_ip")),
        ("show PREFIX", lambda: [store.get_run(some.run_id[:8])]),
        ("tail --once", lambda: store.active_runs()),
    ]  # fmt: skip
    for label, call in calls:
        measure(engine, label, call, repeat)
    engine.dispose()


def recreate_database(server: str) -> str:
    """Drop and create ``flowtel_bench_history`` on the *server* URL; return the URL of it."""
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {BENCH_DB}"))
            conn.execute(sa.text(f"CREATE DATABASE {BENCH_DB}"))
    except sa.exc.DBAPIError as error:
        user = admin.url.username
        sys.exit(
            f"cannot create {BENCH_DB} as {user}: {error.orig}\nIf {user} lacks the right, "
            f'run as an administrator (MariaDB: mysql -uroot -e "...") e.g.\n  CREATE DATABASE '
            f"{BENCH_DB}; GRANT ALL ON {BENCH_DB}.* TO '{user}'@'localhost';\n"
            f"  (PostgreSQL: ALTER USER {user} CREATEDB)"
        )
    finally:
        admin.dispose()
    return bench_url(server)


def bench_url(server: str) -> str:
    """The *server* URL with ``flowtel_bench_history`` as its database."""
    return sa.make_url(server).set(database=BENCH_DB).render_as_string(hide_password=False)


def build(args: argparse.Namespace, path: str, urls: list[str]) -> None:
    """Create the tables on every URL, load the generated runs, then create the indexes."""
    for url in urls:
        create_tables(url)
    started = time.perf_counter()
    generated = generate(args.runs, args.days, time.time())
    pg_url, mysql_url = (bench_url(server) if server else None for server in servers(args))
    load(generated, None if args.no_sqlite else path, pg_url, mysql_url, args.runs)
    print(f"loaded in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    for url in urls:
        started = time.perf_counter()
        create_indexes(url)
        print(f"indexes of {url.split(':')[0]} in {time.perf_counter() - started:.0f}s",
              file=sys.stderr)  # fmt: skip


def servers(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The ``--postgres`` and ``--mysql`` server URLs (None when not given)."""
    return args.postgres, args.mysql


def main() -> None:
    """Parse the flags, build the data set unless --reuse, then run and explain the queries."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs to generate")
    parser.add_argument("--days", type=float, default=365.0, help="history span, ending now")
    parser.add_argument("--sqlite", metavar="PATH", help="SQLite file (default: a temp file)")
    parser.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    parser.add_argument("--postgres", metavar="URL", help=f"PostgreSQL server (uses {BENCH_DB})")
    parser.add_argument("--mysql", metavar="URL", help=f"MariaDB/MySQL server (uses {BENCH_DB})")
    parser.add_argument("--reuse", action="store_true", help="query the existing data only")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite file")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per query")
    args = parser.parse_args()
    path = args.sqlite or os.path.join(tempfile.gettempdir(), "flowtel_bench_history.db")
    urls: list[str] = [] if args.no_sqlite else [f"sqlite:///{path}"]
    given = [server for server in servers(args) if server]
    if args.reuse:
        urls += [bench_url(server) for server in given]
    else:
        urls += [recreate_database(server) for server in given]
        build(args, path, urls)
    try:
        for url in urls:
            run_queries(url, args.repeat)
    finally:
        if not args.keep and not args.no_sqlite and os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
