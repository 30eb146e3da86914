"""How fast ``flowtel runs`` and ``flowtel stats`` answer on a large history, with query plans.

Run: ``python benchmarks/bench_history_queries.py [--runs 1000000] [--sqlite PATH] [--postgres URL]
[--mysql URL] [--no-sqlite] [--reuse] [--keep]``. It generates ``--runs`` runs (23 step rows each
on average: early failures, cancellations, skipped steps, commissioning polls and IPMI retries)
spread over ``--days`` days up to now, with realistic mixes of workflows, device types, outcomes,
durations, errors, stack traces, log lines and the full ``metadata`` JSON
(:mod:`benchmarks.history_data`), and loads the same data into SQLite (``executemany``, journal
off while loading), PostgreSQL (``COPY``) and MariaDB/MySQL (``LOAD DATA LOCAL INFILE``; the
unique keys too are added after the load); each server gets a
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
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.history_data import RUN_COLS, STEP_COLS, Run, generate, rows
from exporters.db.engine import make_engine
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.db.timestamps import sqlite_text
from exporters.query.store import HistoryStore

BENCH_DB = "flowtel_bench_history"
RUN_LIST, STEP_LIST = ",".join(RUN_COLS), ",".join(STEP_COLS)
RUN_TIMES, STEP_TIMES = (6, 7, 8), (6, 7)  # positions of the timestamps in RUN_COLS/STEP_COLS
MYSQL = ("mysql", "mariadb")
TSV = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
PLAN_COLUMNS = ("table", "type", "key", "rows", "r_rows", "filtered", "r_filtered", "Extra")


def with_text_times(row: tuple[Any, ...], positions: tuple[int, ...]) -> tuple[Any, ...]:
    """*row* with its timestamps as flowtel's SQLite text (naive UTC, microseconds)."""
    cells = list(row)
    for i in positions:
        if cells[i] is not None:
            cells[i] = sqlite_text(cells[i])
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
        for cell in with_text_times(row, times)
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
            lite.executemany(run_sql, [with_text_times(r, RUN_TIMES) for r, _ in batch])
            steps = [with_text_times(s, STEP_TIMES) for _, ss in batch for s in ss]
            lite.executemany(step_sql, steps)
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
