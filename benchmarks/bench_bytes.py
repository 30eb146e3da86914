"""Bytes one 23-step run costs on each database: tables, indexes and TOAST, per run.

Run: ``python -m benchmarks.bench_bytes [--runs 2000] [--db sqlite|postgresql|mysql ...]
[--upgrade-from REVISION] [--json FILE]``. For each database it creates the history tables
(in a fresh SQLite file, or a database ``flowtel_bench_bytes`` on the servers that
``FLOWTEL_TEST_POSTGRES_URL``/``FLOWTEL_TEST_MYSQL_URL`` name, whose tables it drops first),
records ``--runs`` runs of the demo's 23-step ``provision_server`` workflow
(:func:`exporters.cli.demo_workflow.run_demo`, seed 7, no step delay: its failures, retries
and skipped steps included) through the real history processor and writer, compacts the
tables and refreshes the statistics, then reads each table's and each index's size from the
database's own catalog and divides by the runs recorded:

- SQLite: ``VACUUM``, ``ANALYZE``, then the ``dbstat`` virtual table (bytes of the pages of
  each table and index);
- PostgreSQL: ``VACUUM (FULL, ANALYZE)``, then ``pg_relation_size`` of the heap, of each index
  and of the TOAST table with its index (``pg_total_relation_size`` minus the rest); the
  figures after a plain ``VACUUM (ANALYZE)`` (what a live table keeps, dead space included)
  are reported too;
- MariaDB/MySQL: ``OPTIMIZE TABLE`` (InnoDB rebuilds the table and analyses it), then
  ``information_schema.TABLES`` (``data_length``, ``index_length``) and
  ``mysql.innodb_index_stats`` (pages of each index).

With ``--upgrade-from 0002`` the tables are created at that revision (``flowtel db upgrade``'s
code path), the runs are written, and the database is upgraded to the newest revision before
it is measured: the figures of a database migrated in place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import database_url, scratch_dir, server_url
from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.cli.demo_workflow import run_demo
from exporters.db import migrations
from exporters.db.schema import metadata

TABLES = ("workflow_history", "workflow_step_history")


def _fresh(engine: sa.Engine) -> None:
    """Drop the history tables and the recorded revision."""
    with engine.begin() as connection:
        metadata.drop_all(connection)
        connection.execute(sa.text(f"DROP TABLE IF EXISTS {migrations.VERSION_TABLE}"))


def record_runs(url: str, runs: int, upgrade_from: str | None) -> dict[str, int]:
    """Write *runs* demo runs into *url* through the history processor; row counts after."""
    from opentelemetry.sdk.trace import TracerProvider

    engine = make_engine(url)
    try:
        _fresh(engine)
        if upgrade_from is not None:
            migrations.upgrade(engine, upgrade_from, backup=False)
        provider = TracerProvider(shutdown_on_exit=False)
        spool = os.path.join(scratch_dir(), "spool")
        processor = WorkflowHistorySpanProcessor(engine, spool_dir=spool)
        provider.add_span_processor(processor)
        run_demo(runs=runs, step_delay=0.0, tracer_provider=provider)
        if not processor.force_flush(600_000):
            raise RuntimeError(f"rows not committed: {processor.stats}")
        provider.shutdown()
        if upgrade_from is not None:
            migrations.upgrade(engine, backup=False)
        with engine.connect() as connection:
            counts = {
                table: connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in TABLES
            }
    finally:
        engine.dispose()
    if counts["workflow_history"] != runs:
        raise RuntimeError(f"{counts['workflow_history']} runs recorded, not {runs}")
    return counts


def _sqlite_sizes(engine: sa.Engine) -> dict[str, Any]:
    raw = engine.raw_connection()
    try:
        raw.isolation_level = None  # type: ignore[attr-defined]
        cursor = raw.cursor()
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.execute("VACUUM")
        cursor.execute("ANALYZE")
        cursor.execute("SELECT name, tbl_name, type FROM sqlite_master")
        owner = {name: (table, kind) for name, table, kind in cursor.fetchall()}
        cursor.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name")
        sizes = dict(cursor.fetchall())
    finally:
        raw.close()
    out: dict[str, Any] = {}
    for table in TABLES:
        indexes = {
            name: int(size)
            for name, size in sizes.items()
            if owner.get(name, ("", ""))[0] == table and owner[name][1] == "index"
        }
        # sqlite_autoindex_* are the UNIQUE constraints' indexes
        out[table] = {"heap": int(sizes.get(table, 0)), "toast": 0, "indexes": indexes}
    return out


def _postgres_sizes(engine: sa.Engine, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in TABLES:
            connection.execute(sa.text(f"VACUUM ({'FULL, ' if full else ''}ANALYZE) {table}"))
        for table in TABLES:
            heap, total, indexes_size = connection.execute(
                sa.text(
                    "SELECT pg_relation_size(c.oid), pg_total_relation_size(c.oid), "
                    "pg_indexes_size(c.oid) FROM pg_class c WHERE c.oid = CAST(:t AS regclass)"
                ),
                {"t": table},
            ).one()
            indexes = dict(
                connection.execute(
                    sa.text(
                        "SELECT i.relname, pg_relation_size(i.oid) FROM pg_index x "
                        "JOIN pg_class i ON i.oid = x.indexrelid "
                        "WHERE x.indrelid = CAST(:t AS regclass)"
                    ),
                    {"t": table},
                ).all()
            )
            out[table] = {
                "heap": int(heap),
                "toast": int(total) - int(heap) - int(indexes_size),
                "indexes": {name: int(size) for name, size in indexes.items()},
            }
    return out


def _mysql_sizes(engine: sa.Engine) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with engine.connect() as connection:
        schema = connection.execute(sa.text("SELECT DATABASE()")).scalar_one()
        page = int(connection.execute(sa.text("SELECT @@innodb_page_size")).scalar_one())
        for table in TABLES:
            connection.execute(sa.text(f"OPTIMIZE TABLE {table}")).all()
            connection.execute(sa.text(f"ANALYZE TABLE {table}")).all()
        connection.commit()
        for table in TABLES:
            data, index_length = connection.execute(
                sa.text(
                    "SELECT data_length, index_length FROM information_schema.TABLES "
                    "WHERE table_schema = :s AND table_name = :t"
                ),
                {"s": schema, "t": table},
            ).one()
            try:
                pages = connection.execute(
                    sa.text(
                        "SELECT index_name, stat_value FROM mysql.innodb_index_stats "
                        "WHERE database_name = :s AND table_name = :t AND stat_name = 'size'"
                    ),
                    {"s": schema, "t": table},
                ).all()
                indexes = {name: int(n) * page for name, n in pages if name != "PRIMARY"}
            except sa.exc.DBAPIError:  # the user may not read mysql.*: the total only
                connection.rollback()
                indexes = {"(secondary indexes, not itemised)": int(index_length)}
            out[table] = {
                "heap": int(data),  # the clustered PRIMARY index: the rows themselves
                "toast": 0,
                "indexes": indexes,
                "index_length": int(index_length),
            }
    return out


def measure_sizes(url: str, *, full: bool = True) -> dict[str, Any]:
    """Per table: heap, TOAST and per-index bytes, after compaction and fresh statistics."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        name = engine.dialect.name
        if name == "sqlite":
            return _sqlite_sizes(engine)
        if name == "postgresql":
            return _postgres_sizes(engine, full)
        return _mysql_sizes(engine)
    finally:
        engine.dispose()


def per_run(sizes: dict[str, Any], runs: int) -> dict[str, Any]:
    """*sizes* divided by *runs*, with each table's and the grand total."""
    out: dict[str, Any] = {}
    total = 0.0
    for table, parts in sizes.items():
        indexes = {name: size / runs for name, size in sorted(parts["indexes"].items())}
        table_total = (parts["heap"] + parts["toast"] + sum(parts["indexes"].values())) / runs
        out[table] = {
            "heap": parts["heap"] / runs,
            "toast": parts["toast"] / runs,
            "indexes": indexes,
            "total": table_total,
        }
        total += table_total
    out["total"] = total
    return out


def run(backend: str, runs: int, upgrade_from: str | None) -> dict[str, Any]:
    """Record *runs* runs on *backend* and measure what they cost."""
    url = database_url(backend, "bytes")
    counts = record_runs(url, runs, upgrade_from)
    result: dict[str, Any] = {"db": backend, "runs": runs, "rows": counts}
    if backend == "postgresql":
        result["after_plain_vacuum"] = per_run(measure_sizes(url, full=False), runs)
    result["per_run"] = per_run(measure_sizes(url), runs)
    if backend == "sqlite":
        os.remove(sa.make_url(url).database or "")
    return result


def _print(result: dict[str, Any]) -> None:
    print(f"\n{result['db']}: {result['runs']} runs, rows {result['rows']}")
    for label in ("after_plain_vacuum", "per_run"):
        figures = result.get(label)
        if figures is None:
            continue
        heading = "compacted" if label == "per_run" else "after a plain VACUUM (ANALYZE)"
        print(f"  {heading}: {figures['total']:,.0f} B per run")
        for table in TABLES:
            part = figures[table]
            print(
                f"    {table}: {part['total']:,.0f} B (heap {part['heap']:,.0f}, "
                f"toast {part['toast']:,.0f})"
            )
            for name, size in part["indexes"].items():
                print(f"      {name}: {size:,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgresql", "mysql"])
    parser.add_argument("--upgrade-from", default=None, help="a revision, e.g. 0002")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    backends = args.db or ["sqlite"] + [b for b in ("postgresql", "mysql") if server_url(b)]
    results = []
    for backend in backends:
        results.append(run(backend, args.runs, args.upgrade_from))
        _print(results[-1])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
