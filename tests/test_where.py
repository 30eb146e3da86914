"""Finding runs by any context key: ``HistoryStore.list_runs(where=...)`` and ``runs --where``.

Runs are written into real SQLite files, PostgreSQL and MariaDB databases — directly, and through
the real history writer for the redaction cases — and read back through the store and the
command line. The index each database uses is shown by its own plan (EXPLAIN); the migration
that creates it is run on a database holding runs from the revision before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from exporters.cli import main
from exporters.db import migrations
from exporters.db.context_index import CONTEXT_TABLE, POSTGRES_INDEX
from exporters.db.engine import make_engine
from exporters.db.migrations.versions import v0006_context_index as context_revision
from exporters.db.schema import create_schema, metadata, workflow_history
from exporters.query.store import HistoryStore
from exporters.query.where import parse_where, where_conditions
from instrumentation import workflow_run
from tests.conftest import History

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
BEFORE = str(context_revision.down_revision)
"""The revision before the context index's (the test holds when the revisions are rechained)."""


def run_row(run_id: str, context: Any, minute: int = 0, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run_id,
        "workflow_id": "provision",
        "workflow_name": "provision_server",
        "status": "completed",
        "started_at": T0 + dt.timedelta(minutes=minute),
        "steps_completed": 1,
        "total_steps": 1,
        "metadata": {"context_data": context},
        "seq": 1,
    }
    row.update(values)
    return row


CONTEXTS: dict[str, Any] = {
    "rack-7-number": {"rack": 7, "site": "ams", "gpu": True},
    "rack-7-text": {"rack": "7", "site": "fra"},
    "rack-8": {"rack": 8, "site": "ams", "gpu": False},
    "rack-none": {"rack": None, "site": "ams"},
    "no-rack": {"site": "ams", "odd key.with dots": "x y"},
    "no-context": None,
}


def fill(url: str) -> sa.Engine:
    engine = make_engine(url)
    create_schema(engine)
    rows = [run_row(name, ctx, n) for n, (name, ctx) in enumerate(CONTEXTS.items())]
    with engine.begin() as connection:
        connection.execute(workflow_history.insert(), rows)
    return engine


def found(engine: sa.Engine, **where: str) -> list[str]:
    return [run.run_id for run in HistoryStore(engine).list_runs(where=where)]


def test_where_matches_any_context_key_compared_as_text_newest_first(db_url: str) -> None:
    engine = fill(db_url)
    try:
        assert found(engine, rack="7") == ["rack-7-text", "rack-7-number"]
        assert found(engine, rack="8") == ["rack-8"]
        assert found(engine, gpu="true") == ["rack-7-number"]
        assert found(engine, gpu="false") == ["rack-8"]
        assert found(engine, site="ams") == ["no-rack", "rack-none", "rack-8", "rack-7-number"]
        assert found(engine, **{"odd key.with dots": "x y"}) == ["no-rack"]
    finally:
        engine.dispose()


def test_where_requires_every_pair_and_never_matches_null_missing_or_other_values(
    db_url: str,
) -> None:
    engine = fill(db_url)
    try:
        assert found(engine, rack="7", site="ams") == ["rack-7-number"]
        assert found(engine, rack="7", site="lon") == []
        assert found(engine, rack="null") == []
        assert found(engine, rack="") == []
        assert found(engine, rack="7.0") == []
        assert found(engine, nothing="7") == []
        store = HistoryStore(engine)
        assert [r.run_id for r in store.list_runs(where={"site": "ams"}, status="failed")] == []
        assert len(store.list_runs(where={"site": "ams"}, limit=2)) == 2
    finally:
        engine.dispose()


def test_where_never_matches_a_redacted_secret_recorded_by_the_writer(history: History) -> None:
    context = {"ipmi_password": "hunter2", "bmc": "https://admin:s3cret@10.0.0.9/", "rack": 3}
    with workflow_run("provision_server", context=context):
        pass
    history.flush()
    engine = history.engine
    assert found(engine, ipmi_password="hunter2") == []
    assert found(engine, bmc="https://admin:s3cret@10.0.0.9/") == []
    [run] = history.runs()
    assert found(engine, ipmi_password="[REDACTED]") == [run.run_id]
    assert found(engine, rack="3") == [run.run_id]


def test_where_never_matches_a_secret_another_tool_stored_unredacted(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine)
    row = run_row("foreign", {"api_token": "tok-123", "dsn": "pg://u:pw@db/x", "rack": "1"})
    with engine.begin() as connection:
        connection.execute(workflow_history.insert(), [row])
    try:
        assert found(engine, api_token="tok-123") == []
        assert found(engine, dsn="pg://u:pw@db/x") == []
        assert found(engine, rack="1") == ["foreign"]
    finally:
        engine.dispose()


def test_sqlite_context_index_follows_inserts_status_changes_first_contexts_and_deletes(
    tmp_path: Any,
) -> None:
    engine = fill(f"sqlite:///{tmp_path}/h.db")
    try:
        table = workflow_history
        with engine.begin() as connection:
            connection.execute(  # a new context as the run ends: indexed again
                table.update()
                .where(table.c.run_id == "rack-8")
                .values(metadata={"context_data": {"rack": 9}}, status="failed")
            )
            connection.execute(  # first written without a context, then with one
                table.update()
                .where(table.c.run_id == "no-context")
                .values(metadata={"context_data": {"rack": 10}})
            )
            connection.execute(table.delete().where(table.c.run_id == "rack-7-text"))
            keys = connection.execute(sa.text(f"SELECT key, value FROM {CONTEXT_TABLE}")).all()
        assert found(engine, rack="8") == []
        assert found(engine, rack="9") == ["rack-8"]
        assert found(engine, rack="10") == ["no-context"]
        assert found(engine, rack="7") == ["rack-7-number"]
        assert ("rack", "9") in keys and ("rack", "8") not in keys
        assert len(keys) == 8  # 11 at first; rack-8's 3 became 1, rack-7-text's 2 went, +1
    finally:
        engine.dispose()


def test_sqlite_metadata_that_is_not_json_is_skipped_by_the_index_and_the_query(
    tmp_path: Any,
) -> None:
    engine = fill(f"sqlite:///{tmp_path}/h.db")
    try:
        with engine.begin() as connection:  # another tool's row: the insert must not fail
            connection.exec_driver_sql(
                "INSERT INTO workflow_history (run_id, workflow_id, status, steps_completed, "
                "total_steps, seq, metadata, started_at) VALUES ('bad', 'w', 'completed', 0, 0, "
                "1, 'not json {', '2026-11-01 13:00:00.000000')"
            )
            connection.exec_driver_sql(
                "UPDATE workflow_history SET metadata = 'still {' WHERE run_id = 'bad'"
            )
        assert found(engine, site="fra") == ["rack-7-text"]
    finally:
        engine.dispose()


def explained(engine: sa.Engine, where: dict[str, str], prefix: str, *setup: str) -> list[str]:
    """The plan of the store's ``where`` query, its statement run with *prefix* in front."""

    def explain(conn: Any, cursor: Any, statement: str, *rest: Any) -> tuple[str, Any]:
        return prefix + statement, rest[0]

    with engine.connect() as connection:
        for statement in setup:
            connection.exec_driver_sql(statement)
        query = sa.select(workflow_history.c.run_id)
        query = query.where(*where_conditions(connection, where))
        sa.event.listen(connection, "before_cursor_execute", explain, retval=True)
        try:
            return [str(row[-1]) for row in connection.execute(query)]
        finally:
            sa.event.remove(connection, "before_cursor_execute", explain)


def test_sqlite_where_reads_the_context_table_by_its_primary_key(tmp_path: Any) -> None:
    engine = fill(f"sqlite:///{tmp_path}/h.db")
    try:
        store = HistoryStore(engine)
        details = " | ".join(explained(engine, {"rack": "7"}, "EXPLAIN QUERY PLAN "))
        assert f"SEARCH {CONTEXT_TABLE} USING PRIMARY KEY (key=? AND value=?)" in details
        assert [r.run_id for r in store.list_runs(where={"rack": "7"})] == [
            "rack-7-text",
            "rack-7-number",
        ]
    finally:
        engine.dispose()


def test_postgres_where_can_use_the_gin_index_on_the_context(server_database: Any) -> None:
    db_url = server_database["postgresql"]
    engine = make_engine(db_url)
    metadata.drop_all(engine)
    engine.dispose()
    engine = fill(db_url)
    try:
        off = "SET enable_seqscan = off"  # six rows: else a scan is cheaper
        plan = "\n".join(explained(engine, {"rack": "7"}, "EXPLAIN ", off))
        assert f"Bitmap Index Scan on {POSTGRES_INDEX}" in plan
    finally:
        engine.dispose()


def test_the_context_index_revision_indexes_the_runs_stored_before_it(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:  # the server's database is shared by the session
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {migrations.VERSION_TABLE}")
        migrations.upgrade(engine, BEFORE)
        rows = [run_row(name, ctx, n) for n, (name, ctx) in enumerate(CONTEXTS.items())]
        with engine.begin() as connection:
            connection.execute(workflow_history.insert(), rows)
        assert found(engine, rack="7") == ["rack-7-text", "rack-7-number"]  # unindexed
        result = migrations.upgrade(engine)
        assert (result.from_revision, result.to_revision) == (BEFORE, migrations.HEAD_REVISION)
        assert found(engine, rack="7") == ["rack-7-text", "rack-7-number"]
        inspector = sa.inspect(engine)
        if engine.dialect.name == "sqlite":
            with engine.connect() as connection:
                count = connection.exec_driver_sql(f"SELECT count(*) FROM {CONTEXT_TABLE}")
                assert count.scalar_one() == 11
            assert any("context" in note for note in result.notes)
        elif engine.dialect.name == "postgresql":
            names = {i["name"] for i in inspector.get_indexes("workflow_history")}
            assert POSTGRES_INDEX in names
    finally:
        engine.dispose()


def test_parse_where_splits_on_the_first_equals_and_refuses_malformed_items() -> None:
    assert parse_where(["a=1", "url=http://x/?q=1", "empty="]) == {
        "a": "1",
        "url": "http://x/?q=1",
        "empty": "",
    }
    assert parse_where(["a=1", "a=1"]) == {"a": "1"}
    for bad, says in (
        (["rack"], "expected KEY=VALUE"),
        (["=7"], "cannot filter on the context key ''"),
        (['a"b=1'], "without"),
        (["a=1", "a=2"], "given both '1' and '2'"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_where(bad)


def test_runs_command_where_option_filters_and_explains_a_malformed_item(db_url: str) -> None:
    fill(db_url).dispose()
    runner = CliRunner()
    out = runner.invoke(
        main, ["runs", "--db", db_url, "--where", "rack=7", "--where", "site=ams", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert [run["run_id"] for run in json.loads(out.output)] == ["rack-7-number"]
    none = runner.invoke(main, ["runs", "--db", db_url, "--where", "rack=42"])
    assert none.exit_code == 0 and "No runs match these filters." in none.output
    bad = runner.invoke(main, ["runs", "--db", db_url, "--where", "rack"])
    assert bad.exit_code == 2
    assert "expected KEY=VALUE" in bad.output


@contextlib.contextmanager
def serve_client(db_url: str) -> Iterator[Any]:
    """``flowtel serve``'s application on *db_url* in a test client; its engine disposed after."""
    from fastapi.testclient import TestClient

    from exporters.serve.app import create_app

    app = create_app(db_url)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            yield client
    finally:
        app.state.flowtel.engine.dispose()


def test_api_runs_where_is_repeatable_and_a_malformed_pair_is_400(db_url: str) -> None:
    fill(db_url).dispose()
    with serve_client(db_url) as client:
        one = client.get("/api/runs", params={"where": "rack=7"})
        both = client.get("/api/runs", params=[("where", "rack=7"), ("where", "site=ams")])
        secret = client.get("/api/runs", params={"where": "ipmi_password=hunter2"})
        bad = client.get("/api/runs", params={"where": "rack"})
    assert one.status_code == both.status_code == secret.status_code == 200
    assert [r["run_id"] for r in one.json()["runs"]] == ["rack-7-text", "rack-7-number"]
    assert [r["run_id"] for r in both.json()["runs"]] == ["rack-7-number"]
    assert secret.json()["runs"] == []
    assert bad.status_code == 400
    assert "expected KEY=VALUE" in bad.text


def test_runs_page_has_a_context_filter_field_that_its_pager_keeps(db_url: str) -> None:
    fill(db_url).dispose()
    with serve_client(db_url) as client:
        page = client.get("/", params=[("where", "site=ams"), ("where", "rack=8"), ("limit", 1)])
        first = client.get("/", params=[("where", "site=ams"), ("limit", 1)])
    assert page.status_code == 200
    assert 'name="where" value="site=ams"' in page.text
    assert 'name="where" value="rack=8"' in page.text
    assert 'placeholder="rack=r12"' in page.text  # the empty field for one more pair
    assert "rack-8" in page.text and "rack-7-number" not in page.text
    assert "where=site%3Dams&amp;where=rack%3D8" in page.text  # the live refresh asks again
    assert "where=site%3Dams&amp;limit=1&amp;cursor=" in first.text  # the next page too
