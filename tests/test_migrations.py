"""``flowtel db upgrade``: fresh databases, and the old system's table upgraded in place.

The central test builds the old ``workflow_history`` (and its ``servers`` table) with 1,000
old-style rows on SQLite, PostgreSQL and MariaDB, runs ``flowtel db upgrade`` through the click
group, and then proves that every old value is unchanged (raw bytes through a plain ``sqlite3``
connection on SQLite), that ``flowtel db check`` finds no difference, that the foreign key
still holds, and that runs recorded by flowtel's processor land beside the old ones and both
are listed. Server databases are created per test and dropped afterwards.
"""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine, migrations
from exporters.cli.db import db
from exporters.cli.history import runs, show
from exporters.db.migrations.legacy import LEGACY_SERVICE_NAME
from exporters.db.schema import create_schema
from instrumentation import StepContext
from tests.conftest import BACKENDS, fresh_server_database
from tests.old_model import ported
from tests.old_model.lab import Lab
from tests.old_model.legacy_db import SERVERS, build_old_database, raw_old_values

ROWS = 1000


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of a brand-new, empty database of its own on each backend."""
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path}/history.db"
        return
    with fresh_server_database(backend, "flowtel_mig") as url:
        yield url


def invoke(*args: str) -> Any:
    """Run ``flowtel db ...`` in-process."""
    return CliRunner().invoke(db, list(args))


def record_new_runs(url: str) -> list[str]:
    """Run the ported provisioning workflow twice through flowtel's processor."""
    engine = make_engine(url)
    processor = WorkflowHistorySpanProcessor(engine)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    run_ids = []
    try:
        for lab in (Lab(), Lab(bios_mismatch=True)):
            workflow = ported.ProvisionServerWorkflow(lab)
            workflow.tracer_provider = provider
            context = StepContext(
                workflow_id=f"provision_{SERVERS[0]}", server_id=SERVERS[0], device_type="x"
            )
            run_ids.append(workflow.execute(context).run_id)
        assert processor.force_flush(10_000), processor.stats
    finally:
        processor.shutdown(10_000)
    return run_ids


def test_head_revision_constant_matches_the_shipped_revisions() -> None:
    assert migrations.script_directory().get_current_head() == migrations.HEAD_REVISION


def test_upgrade_creates_the_schema_on_an_empty_database(empty_url: str) -> None:
    result = invoke("upgrade", "--db", empty_url)
    assert result.exit_code == 0, result.output
    assert f"from none to {migrations.HEAD_REVISION}" in result.output
    assert invoke("check", "--db", empty_url).exit_code == 0
    current = invoke("current", "--db", empty_url, "--json")
    assert json.loads(current.output)["up_to_date"] is True
    again = invoke("upgrade", "--db", empty_url)
    assert again.exit_code == 0 and "nothing to do" in again.output


def test_upgrade_adopts_tables_flowtel_created_before_migrations(empty_url: str) -> None:
    engine = make_engine(empty_url)
    create_schema(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO workflow_history (run_id, workflow_id, status, steps_completed, "
            "total_steps, seq) VALUES ('r-1', 'w', 'completed', 1, 1, 3)"
        )
    result = migrations.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT run_id, seq FROM workflow_history").all()
    engine.dispose()
    assert (result.from_revision, result.to_revision) == (None, migrations.HEAD_REVISION)
    assert [tuple(r) for r in rows] == [("r-1", 3)]
    assert invoke("check", "--db", empty_url).exit_code == 0


def test_the_old_table_is_upgraded_in_place(empty_url: str) -> None:
    rows = build_old_database(empty_url)
    before = raw_old_values(empty_url)
    assert len(before) == ROWS
    result = invoke("upgrade", "--db", empty_url)
    assert result.exit_code == 0, result.output
    assert f"imported {ROWS} existing rows unchanged" in result.output
    assert "kept foreign key workflow_history(server_id) -> servers(server_id)" in result.output
    assert raw_old_values(empty_url) == before
    check = invoke("check", "--db", empty_url)
    assert check.exit_code == 0 and ": matches" in check.output, check.output

    engine = make_engine(empty_url)
    with engine.connect() as connection:
        imported = connection.exec_driver_sql(
            "SELECT id, run_id, service_name, workflow_name, seq FROM workflow_history ORDER BY id"
        ).all()
    for (row_id, run_id, service, workflow_name, seq), row in zip(imported, rows, strict=True):
        assert (run_id, service, seq) == (f"legacy-{row_id}", LEGACY_SERVICE_NAME, 0)
        try:
            expected = json.loads(row["metadata"] or "null")
        except ValueError:
            expected = None
        name = expected.get("workflow_name") if isinstance(expected, dict) else None
        assert workflow_name == name

    new_run_ids = record_new_runs(empty_url)
    assert raw_old_values(empty_url)[:ROWS] == before  # the new rows come after
    listed = CliRunner().invoke(runs, ["--db", empty_url, "--json", "--limit", "5000"])
    assert listed.exit_code == 0, listed.output
    listed_ids = {run["run_id"] for run in json.loads(listed.output)}
    assert {f"legacy-{r[0]}" for r in imported} | set(new_run_ids) == listed_ids
    readable = next(i for i, row in enumerate(rows, 1) if (row["metadata"] or "").startswith("{"))
    detail = CliRunner().invoke(show, [f"legacy-{readable}", "--db", empty_url, "--json"])
    assert detail.exit_code == 0, detail.output
    assert json.loads(detail.output)["service_name"] == LEGACY_SERVICE_NAME

    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO workflow_history (run_id, workflow_id, server_id, status, "
            "steps_completed, total_steps, seq) VALUES ('x', 'w', 'no-such-server', 'running', "
            "0, 0, 1)"
        )
    engine.dispose()


def test_sqlite_upgrade_backs_up_first_and_keeps_the_counter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    build_old_database(url)
    with closing(sqlite3.connect(tmp_path / "old.db")) as connection:
        connection.execute("DELETE FROM workflow_history WHERE id > 990")
        connection.commit()
    before = raw_old_values(url)
    result = invoke("upgrade", "--db", url)
    assert result.exit_code == 0, result.output
    (backup,) = tmp_path.glob("old.db.bak-*")
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert f"Backup of the previous file: {backup}" in result.output
    assert raw_old_values(f"sqlite:///{backup}") == before
    with closing(sqlite3.connect(tmp_path / "old.db")) as connection:
        counter = connection.execute("SELECT seq FROM sqlite_sequence").fetchall()
        fks = connection.execute("PRAGMA foreign_key_list(workflow_history)").fetchall()
        orphans = connection.execute("PRAGMA foreign_key_check(workflow_history)").fetchall()
    assert counter == [(ROWS,)]  # ids of deleted rows are never reused
    assert [(fk[2], fk[3], fk[4]) for fk in fks] == [("servers", "server_id", "server_id")]
    assert orphans and "name a server missing from the referred table" in result.output
    assert invoke("upgrade", "--db", url).exit_code == 0
    assert len(list(tmp_path.glob("old.db.bak-*"))) == 1  # nothing to do: no second copy


def test_a_foreign_table_of_the_same_name_is_refused_unchanged(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/other.db"
    with closing(sqlite3.connect(tmp_path / "other.db")) as connection:
        connection.execute("CREATE TABLE workflow_history (name TEXT, value TEXT)")
        connection.execute("INSERT INTO workflow_history VALUES ('a', 'b')")
        connection.commit()
    result = invoke("upgrade", "--db", url)
    assert result.exit_code == 1
    assert "neither flowtel's nor the old workflow history table" in result.output
    with closing(sqlite3.connect(tmp_path / "other.db")) as connection:
        columns = [c[1] for c in connection.execute("PRAGMA table_info(workflow_history)")]
        tables = {t for (t,) in connection.execute("SELECT name FROM sqlite_master")}
    assert columns == ["name", "value"] and "workflow_step_history" not in tables


@pytest.mark.parametrize("empty_url", ["postgresql"], indirect=True)
def test_postgresql_metadata_that_is_not_json_stops_the_upgrade_atomically(
    empty_url: str,
) -> None:
    build_old_database(empty_url)
    engine = sa.create_engine(empty_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("UPDATE workflow_history SET metadata = '{oops' WHERE id = 7")
    result = invoke("upgrade", "--db", empty_url)
    assert result.exit_code == 1 and "(id 7)" in result.output, result.output
    with engine.connect() as connection:
        columns = {c["name"] for c in sa.inspect(connection).get_columns("workflow_history")}
    engine.dispose()
    assert "run_id" not in columns  # rolled back: nothing was half-done


@pytest.mark.parametrize("empty_url", ["mysql"], indirect=True)
def test_mariadb_on_update_timestamps_do_not_move_during_the_backfill(empty_url: str) -> None:
    build_old_database(empty_url, count=50)
    engine = sa.create_engine(empty_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "ALTER TABLE workflow_history MODIFY started_at TIMESTAMP NULL "
            "DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP"
        )
    engine.dispose()
    before = raw_old_values(empty_url)
    assert invoke("upgrade", "--db", empty_url).exit_code == 0
    assert raw_old_values(empty_url) == before


def test_imported_rows_whose_metadata_is_not_json_can_be_shown(tmp_path: Path) -> None:
    """An imported row whose old metadata is not JSON is shown with that text as is."""
    url = f"sqlite:///{tmp_path}/old.db"
    rows = build_old_database(url)
    assert invoke("upgrade", "--db", url).exit_code == 0
    broken = next(i for i, row in enumerate(rows, 1) if row["metadata"] == "{not json")
    detail = CliRunner().invoke(show, [f"legacy-{broken}", "--db", url, "--json"])
    assert detail.exit_code == 0, detail.output


def test_the_reaper_leaves_imported_rows_alone(tmp_path: Path) -> None:
    from exporters.ops.reaper import reap

    url = f"sqlite:///{tmp_path}/old.db"
    build_old_database(url, broken_json=False)
    assert invoke("upgrade", "--db", url).exit_code == 0
    before = raw_old_values(url)
    engine = make_engine(url)
    reap(engine, 3600)
    engine.dispose()
    assert raw_old_values(url) == before


def test_revision_0002_rekeys_the_steps_of_a_0001_database_keeping_its_rows(
    empty_url: str,
) -> None:
    from exporters.db.check import check_schema
    from exporters.db.upsert import upsert_rows

    engine = make_engine(empty_url)
    migrations.upgrade(engine, "0001")
    with engine.begin() as connection:
        for n in range(3):
            connection.exec_driver_sql(
                "INSERT INTO workflow_step_history (run_id, span_id, step_index, step_name, "
                f"attempt, status) VALUES ('run-{n}', 'span-{n}', {n}, 'step', 1, 'completed')"
            )
    before = check_schema(engine)
    assert ("missing_unique", True) in [(d.kind, d.blocking) for d in before.differences]
    result = migrations.upgrade(engine, "0002")
    assert (result.from_revision, result.to_revision) == ("0001", "0002")
    assert any("(run_id, span_id)" in note for note in result.notes)
    assert "missing_unique" not in [d.kind for d in check_schema(engine).differences]
    migrations.upgrade(engine)
    assert check_schema(engine).matches
    rows = [
        {
            "run_id": f"run-{n}",
            "span_id": "span-0",
            "step_index": 1,
            "step_name": "again",
            "attempt": 1,
            "status": "completed",
        }
        for n in (1, 2)
    ]
    from exporters.db.schema import STEP_COLUMNS

    rows = [{name: row.get(name) for name in STEP_COLUMNS} for row in rows]
    with engine.begin() as connection:
        assert upsert_rows(connection, [], rows).step_conflicts == 0
    with engine.connect() as connection:
        stored = connection.exec_driver_sql(
            "SELECT run_id, span_id, step_name FROM workflow_step_history ORDER BY run_id, span_id"
        ).all()
    engine.dispose()
    assert [tuple(r) for r in stored] == [
        ("run-0", "span-0", "step"),
        ("run-1", "span-0", "again"),
        ("run-1", "span-1", "step"),
        ("run-2", "span-0", "again"),
        ("run-2", "span-2", "step"),
    ]
    assert invoke("check", "--db", empty_url).exit_code == 0


def record_demo_runs(url: str, runs: int = 12) -> None:
    """*runs* demo provisioning runs (failures, retries, skips, stack traces, log lines)."""
    from exporters.cli.demo_workflow import run_demo

    engine = make_engine(url)
    processor = WorkflowHistorySpanProcessor(engine)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    try:
        summary = run_demo(
            runs=runs, seed=3, failure_rate=0.5, step_delay=0.0, tracer_provider=provider
        )
        assert summary.failed and summary.completed, summary
        assert processor.force_flush(10_000), processor.stats
    finally:
        processor.shutdown(10_000)
        engine.dispose()


def stored_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both history tables, every column, by id."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return {
                table: [
                    tuple(row)
                    for row in connection.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id")
                ]
                for table in ("workflow_history", "workflow_step_history")
            }
    finally:
        engine.dispose()


def what_readers_see(url: str) -> dict[str, Any]:
    """What the CLI's query API and the web view's queries return for every run."""
    import datetime as dt

    from exporters.query.store import HistoryStore
    from exporters.serve.queries import RunFilters, legacy_rows, live_snapshot, runs_page

    store = HistoryStore(make_engine(url))
    try:
        listed = [run.to_json() for run in store.list_runs(limit=1000)]
        since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        stats = store.stats(since=since, by="device_type").to_json()
        stats.pop("until")
        page = runs_page(store.engine, RunFilters(status="failed"), limit=1000)
        with store.engine.connect() as connection:
            live = {k: v.to_json() for k, v in live_snapshot(connection, []).items()}
        return {
            "runs": listed,
            "details": [store.get_run(run["run_id"]).to_json() for run in listed],
            "stats": stats,
            "failed_page": [run.to_json() for run in page.runs],
            "live": live,
            "legacy": legacy_rows(store.engine, {}, 1000, None),
        }
    finally:
        store.close()


def step_index_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {str(i["name"]) for i in sa.inspect(engine).get_indexes("workflow_step_history")}
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Take the database at *url* down to *revision* with the revisions' own downgrades."""
    from alembic import command

    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(migrations.alembic_config(connection), revision)
    finally:
        engine.dispose()


def test_revision_0003_keeps_every_row_field_and_reading_of_a_0002_database(
    empty_url: str,
) -> None:
    engine = make_engine(empty_url)
    migrations.upgrade(engine)
    engine.dispose()
    record_demo_runs(empty_url)
    seen = what_readers_see(empty_url)
    assert any(run["failed_step"] for run in seen["details"])
    assert any(step["error_stacktrace"] for run in seen["details"] for step in run["steps"])
    downgrade(empty_url, "0002")  # the runs as a 0002 database holds them
    rows = stored_rows(empty_url)

    result = invoke("upgrade", "--db", empty_url)

    assert result.exit_code == 0, result.output
    assert f"from 0002 to {migrations.HEAD_REVISION}" in result.output
    after = stored_rows(empty_url)  # later revisions append columns: compare 0002's
    assert {t: [r[: len(rows[t][0])] for r in after[t]] for t in after} == rows
    assert what_readers_see(empty_url) == seen
    assert invoke("check", "--db", empty_url).exit_code == 0
    record_demo_runs(empty_url, runs=2)  # the writer's upserts find their key
    assert len(stored_rows(empty_url)["workflow_history"]) == len(rows["workflow_history"]) + 2


def test_revision_0003_drops_the_step_indexes_no_query_uses(empty_url: str) -> None:
    engine = make_engine(empty_url)
    migrations.upgrade(engine, "0002")
    assert "ix_workflow_step_history_run_id" in step_index_names(empty_url)

    result = migrations.upgrade(engine)

    postgresql = engine.dialect.name == "postgresql"
    engine.dispose()
    names = step_index_names(empty_url)
    assert result.to_revision == migrations.HEAD_REVISION
    assert "ix_workflow_step_history_run_id" not in names
    assert ("ix_workflow_step_history_started_at" in names) is postgresql
    assert "ix_workflow_step_history_status_started_at" in names
    assert any("ix_workflow_step_history_run_id" in note for note in result.notes)


def test_revision_0003_creates_no_dropped_index_on_a_new_database(empty_url: str) -> None:
    engine = make_engine(empty_url)
    migrations.upgrade(engine)
    postgresql = engine.dialect.name == "postgresql"
    engine.dispose()
    fresh = step_index_names(empty_url)
    other = empty_url.replace("history.db", "created.db") if "sqlite" in empty_url else None
    assert "ix_workflow_step_history_run_id" not in fresh
    assert ("ix_workflow_step_history_started_at" in fresh) is postgresql
    if other is not None:  # the writer's own create_all builds the same indexes
        created = make_engine(other)
        create_schema(created)
        created.dispose()
        assert step_index_names(other) == fresh


def test_revision_0003_runs_again_after_an_interrupted_upgrade(empty_url: str) -> None:
    engine = make_engine(empty_url)
    migrations.upgrade(engine, "0002")
    mysql = engine.dialect.name in ("mysql", "mariadb")
    with engine.begin() as connection:  # as if MariaDB had committed the first DROP INDEX
        on_table = " ON workflow_step_history" if mysql else ""
        connection.execute(sa.text(f"DROP INDEX ix_workflow_step_history_run_id{on_table}"))

    result = migrations.upgrade(engine)

    engine.dispose()
    assert result.to_revision == migrations.HEAD_REVISION
    assert "ix_workflow_step_history_run_id" not in step_index_names(empty_url)
    assert invoke("check", "--db", empty_url).exit_code == 0


def step_index_definitions(url: str) -> dict[str, str]:
    """PostgreSQL's definition of each step index, by name."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                sa.text(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE tablename = 'workflow_step_history'"
                )
            ).all()
        return {str(name): str(definition) for name, definition in found}
    finally:
        engine.dispose()


def test_revision_0003_makes_postgresql_step_status_index_partial(empty_url: str) -> None:
    if not empty_url.startswith("postgresql"):
        pytest.skip("partial indexes are PostgreSQL's")
    engine = make_engine(empty_url)
    migrations.upgrade(engine, "0002")
    status_index = "ix_workflow_step_history_status_started_at"
    assert " WHERE " not in step_index_definitions(empty_url)[status_index]

    migrations.upgrade(engine)

    engine.dispose()
    assert step_index_definitions(empty_url)[status_index].endswith(
        "WHERE ((status)::text <> 'completed'::text)"
    )


def plan(url: str, sql: str) -> str:
    """The query plan of *sql* (PostgreSQL with sequential scans discouraged)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(sa.text("SET enable_seqscan = off"))
                rows = connection.execute(sa.text(f"EXPLAIN {sql}")).all()
                return "\n".join(str(r[0]) for r in rows)
            rows = connection.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}")).all()
            return "\n".join(str(r[-1]) for r in rows)
    finally:
        engine.dispose()


STEP_QUERIES = {
    "steps_of_a_run": "SELECT * FROM workflow_step_history WHERE run_id = 'r' "
    "ORDER BY step_index, attempt",
    "failed_since": "SELECT step_name, error_type FROM workflow_step_history "
    "WHERE status = 'failed' AND started_at >= '2026-11-01'",
    "retrying_since": "SELECT step_name FROM workflow_step_history "
    "WHERE status = 'retrying' AND started_at >= '2026-11-01'",
    "completed_since": "SELECT step_name, duration_ms FROM workflow_step_history "
    "WHERE status = 'completed' AND started_at >= '2026-11-01'",
}


def test_step_queries_use_an_index_after_revision_0003(empty_url: str) -> None:
    if empty_url.startswith("mysql"):
        pytest.skip("MariaDB plans a full scan of a small table whatever its indexes")
    engine = make_engine(empty_url)
    migrations.upgrade(engine, "0002")
    migrations.upgrade(engine)
    engine.dispose()

    plans = {name: plan(empty_url, sql) for name, sql in STEP_QUERIES.items()}

    for name, text in plans.items():
        # PostgreSQL: (Bitmap) Index Scan, never Seq Scan; SQLite: SEARCH ... USING INDEX
        assert "Seq Scan" not in text and "SCAN workflow_step_history" not in text, (name, text)
        assert "Index Scan" in text or "USING INDEX" in text, (name, text)


def test_revision_0003_downgrades_to_the_indexes_of_0002(empty_url: str) -> None:
    from alembic import command

    engine = make_engine(empty_url)
    migrations.upgrade(engine, "0002")
    at_0002 = step_index_names(empty_url)
    migrations.upgrade(engine)
    with engine.begin() as connection:
        command.downgrade(migrations.alembic_config(connection), "0002")
    postgresql = engine.dialect.name == "postgresql"
    engine.dispose()

    assert step_index_names(empty_url) == at_0002
    reader = make_engine(empty_url)
    assert migrations.current_revision(reader) == "0002"
    reader.dispose()
    if postgresql:
        definitions = step_index_definitions(empty_url)
        assert " WHERE " not in definitions["ix_workflow_step_history_status_started_at"]
