"""The schema check and ``prepare_schema``: every difference in one report, fail fast, not per row.

Each test builds the history tables as ``exporters/db/schema.py`` defines them but with one
deliberate change (a dropped, retyped or extra column, a missing index or unique constraint)
on SQLite, PostgreSQL and MariaDB, and checks what :func:`check_schema` reports, whether
:func:`prepare_schema` refuses with a message naming ``flowtel db upgrade``, what ``flowtel db
check`` prints and exits with, and that the writer refuses the table instead of failing row by
row. An unreachable database raises its own ``OperationalError``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.dialects import mysql

from exporters import WorkflowHistorySpanProcessor, display_url, make_engine, migrations
from exporters.cli.db import db
from exporters.db.check import (
    SchemaDifference,
    SchemaMismatchError,
    check_schema,
    prepare_schema,
)
from exporters.db.schema import metadata
from instrumentation import workflow_run

UNREACHABLE = "postgresql+psycopg://flowtel:s3cret-pw@127.0.0.1:1/flowtel"


def create_variant(
    url: str,
    *,
    drop: tuple[str, ...] = (),
    retype: dict[str, Any] | None = None,
    not_null: tuple[str, ...] = (),
    extra: tuple[sa.Column[Any], ...] = (),
    drop_index: str | None = None,
    unique: bool = True,
) -> None:
    """Create both tables as schema.py has them, except for the given changes to the runs."""
    meta = sa.MetaData()
    for table in metadata.tables.values():
        runs = table.name == "workflow_history"
        columns: list[Any] = []
        for column in table.columns:
            if runs and column.name in drop:
                continue
            kind = (retype or {}).get(column.name, column.type) if runs else column.type
            columns.append(
                sa.Column(
                    column.name,
                    kind,
                    primary_key=column.primary_key,
                    nullable=column.nullable and not (runs and column.name in not_null),
                    unique=bool(column.unique) and (unique or not runs),
                )
            )
        indexes = [
            sa.Index(index.name, *(c.name for c in index.columns))
            for index in table.indexes
            if not runs
            or (index.name != drop_index and not {c.name for c in index.columns} & set(drop))
        ]
        keys = [  # table-level unique constraints (the steps' (run_id, span_id))
            sa.UniqueConstraint(*(c.name for c in constraint.columns), name=constraint.name)
            for constraint in table.constraints
            if isinstance(constraint, sa.UniqueConstraint) and len(constraint.columns) > 1
        ]
        sa.Table(table.name, meta, *columns, *(extra if runs else ()), *indexes, *keys)
    engine = sa.create_engine(url)
    meta.create_all(engine)
    engine.dispose()


def differences(url: str) -> list[tuple[str, str, bool]]:
    engine = make_engine(url)
    try:
        report = check_schema(engine)
    finally:
        engine.dispose()
    return [(d.kind, d.name, d.blocking) for d in report.differences]


def check_cli(url: str, *args: str) -> Any:
    return CliRunner().invoke(db, ["check", "--db", url, *args])


def test_an_empty_database_is_created_at_head_once(db_url: str) -> None:
    engine = make_engine(db_url)
    first = prepare_schema(engine)
    second = prepare_schema(engine)
    engine.dispose()
    assert first.matches and second.matches
    assert first.revision == second.revision == migrations.HEAD_REVISION
    result = check_cli(db_url)
    assert result.exit_code == 0 and ": matches" in result.output


def test_tables_dropped_under_a_stale_revision_are_created_again(db_url: str) -> None:
    engine = make_engine(db_url)
    prepare_schema(engine)
    metadata.drop_all(engine)
    report = prepare_schema(engine)
    engine.dispose()
    assert report.matches and report.revision == migrations.HEAD_REVISION


def test_a_missing_column_is_refused_naming_the_upgrade_command(db_url: str) -> None:
    create_variant(db_url, drop=("host",))
    assert differences(db_url) == [("missing_column", "host", True)]
    engine = make_engine(db_url)
    with pytest.raises(SchemaMismatchError) as caught:
        prepare_schema(engine)
    engine.dispose()
    message = str(caught.value)
    assert f"flowtel db upgrade --db {display_url(db_url)}" in message
    assert "workflow_history.host: missing column (expected VARCHAR(255))" in message
    password = sa.make_url(db_url).password
    if password:
        assert f":{password}@" not in message and ":***@" in message
    assert isinstance(caught.value, ValueError)
    result = check_cli(db_url)
    assert result.exit_code == 1 and "workflow_history.host: missing column" in result.output


def test_mistyped_extra_and_not_null_columns_are_reported_together(db_url: str) -> None:
    create_variant(
        db_url,
        retype={"host": sa.Integer()},
        not_null=("server_id",),
        extra=(
            sa.Column("note", sa.Text()),
            sa.Column("tenant", sa.String(10), nullable=False),
        ),
    )
    assert differences(db_url) == [
        ("not_null", "server_id", True),
        ("mistyped_column", "host", True),
        ("extra_column", "note", False),
        ("extra_column", "tenant", True),
    ]
    result = check_cli(db_url, "--json")
    assert result.exit_code == 1
    kinds = [d["kind"] for d in json.loads(result.output)["differences"]]
    assert kinds == ["not_null", "mistyped_column", "extra_column", "extra_column"]


def test_types_are_compared_by_what_each_database_stores(db_url: str) -> None:
    dialect = sa.make_url(db_url).get_backend_name()
    stamp = {"postgresql": sa.DateTime(), "mysql": mysql.DATETIME()}.get(dialect, sa.Text())
    create_variant(db_url, retype={"started_at": stamp, "workflow_id": sa.String(20)})
    expected = (
        []
        if dialect == "sqlite"
        else [("mistyped_column", n, True) for n in ("workflow_id", "started_at")]
    )
    assert sorted(differences(db_url)) == sorted(expected)


def test_a_missing_index_is_reported_but_does_not_block(db_url: str) -> None:
    create_variant(db_url, drop_index="ix_workflow_history_trace_id")
    assert differences(db_url) == [("missing_index", "ix_workflow_history_trace_id", False)]
    engine = make_engine(db_url)
    assert not prepare_schema(engine).matches  # usable: writes would succeed
    engine.dispose()
    assert check_cli(db_url).exit_code == 1


def test_a_missing_unique_constraint_blocks(db_url: str) -> None:
    create_variant(db_url, unique=False)
    assert differences(db_url) == [("missing_unique", "run_id", True)]


def test_the_writer_refuses_a_table_it_cannot_write_instead_of_failing_per_row(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/history.db"
    create_variant(url, drop=("host",))
    processor = WorkflowHistorySpanProcessor(make_engine(url), spool=False)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    for n in range(3):
        with workflow_run("provision_server", workflow_id=f"w{n}", tracer_provider=provider):
            pass
    try:
        assert not processor.force_flush(5_000)
        assert str(processor.stats["last_error"]).startswith("SchemaMismatchError: ")
    finally:
        processor.shutdown(1_000)
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM workflow_history").scalar() == 0
    engine.dispose()


def test_an_unreachable_database_raises_its_own_error() -> None:
    engine = make_engine(UNREACHABLE)
    with pytest.raises(sa.exc.OperationalError):
        prepare_schema(engine)
    engine.dispose()
    result = check_cli(UNREACHABLE)
    assert result.exit_code == 3 and "s3cret-pw" not in result.output
    assert "cannot use the history database" in result.output


def test_commands_never_create_a_missing_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/absent.db"
    result = check_cli(url)
    assert result.exit_code == 1 and "workflow_step_history: missing table" in result.output
    current = CliRunner().invoke(db, ["current", "--db", url])
    assert "revision none" in current.output
    pruned = CliRunner().invoke(db, ["prune", "--db", url, "--older-than", "90d"])
    assert pruned.exit_code == 0 and "Nothing to prune" in pruned.output
    assert not (tmp_path / "absent.db").exists()


def test_a_difference_reads_as_one_line() -> None:
    difference = SchemaDifference("t", "mistyped_column", "c", "BIGINT", "INTEGER")
    assert str(difference) == "t.c: mistyped column (expected BIGINT, found INTEGER)"


def test_configure_fails_fast_on_a_table_missing_a_column(tmp_path: Path) -> None:
    from exporters import configure

    url = f"sqlite:///{tmp_path}/history.db"
    create_variant(url, drop=("host",))
    with pytest.raises(SchemaMismatchError, match="flowtel db upgrade"):
        handle = configure(database_url=url, tracer_provider=TracerProvider(), otlp=False)
        handle.shutdown(1_000)


def test_configure_does_not_fail_on_an_unreachable_database(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """configure() returns a handle and the writer says, once, masked, that it will spool."""
    from exporters import configure

    with caplog.at_level(logging.ERROR, logger="flowtel"):
        handle = configure(database_url=UNREACHABLE, tracer_provider=TracerProvider(), otlp=False)
        handle.shutdown(1_000)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "@127.0.0.1:1/flowtel" in errors[0] and "spooling" in errors[0]
    assert "s3cret-pw" not in caplog.text
