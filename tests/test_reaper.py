"""Heartbeat and reaper: silent running runs become abandoned; their owner has the last word."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, create_schema, make_engine
from exporters.cli.reap import reap as reap_command
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.db.upsert import upsert_rows
from exporters.ops.reaper import reap
from instrumentation import workflow_run
from tests.test_outage import wait_for

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def run_row(run_id: str, status: str, age: dt.timedelta, seq: int = 10) -> dict[str, Any]:
    """A run snapshot whose last heartbeat was *age* ago."""
    row: dict[str, Any] = {c.name: None for c in workflow_history.columns if c.name != "id"}
    row.update(
        run_id=run_id,
        workflow_id=f"wf-{run_id}",
        workflow_name="provision_server",
        status=status,
        started_at=NOW - age,
        updated_at=NOW - age,
        steps_completed=0,
        total_steps=3,
        host="worker-7",
        pid=4242,
        seq=seq,
        metadata={"context_data": {"server_id": run_id}},
    )
    return row


def rows(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        found = connection.execute(sa.select(workflow_history)).mappings().all()
    return {row["run_id"]: row for row in found}


def write(engine: sa.Engine, *snapshots: dict[str, Any]) -> None:
    with engine.begin() as connection:
        upsert_rows(connection, list(snapshots), [])


def test_reap_marks_only_silent_running_runs(db_url: str) -> None:
    """Running and silent for longer than the threshold: abandoned, with the reason; seq kept.

    A row that never had a heartbeat (imported from the old system) is left alone.
    """
    engine = make_engine(db_url)
    create_schema(engine)
    old = dt.timedelta(minutes=30)
    write(
        engine,
        run_row("silent", "running", old),
        run_row("beating", "running", dt.timedelta(minutes=1)),
        run_row("done", "completed", old),
        run_row("broke", "failed", old),
        run_row("imported", "running", old) | {"updated_at": None},  # never beat: not ours
    )
    reaped = reap(engine, dt.timedelta(minutes=10), now=NOW)
    assert [(r.run_id, r.host, r.pid) for r in reaped] == [("silent", "worker-7", 4242)]
    found = rows(engine)
    assert {k: v["status"] for k, v in found.items()} == {
        "silent": "abandoned",
        "beating": "running",
        "done": "completed",
        "broke": "failed",
        "imported": "running",
    }
    silent = found["silent"]
    assert silent["seq"] == 10
    assert silent["metadata"]["context_data"] == {"server_id": "silent"}
    assert "no heartbeat for more than 10m" in silent["metadata"]["abandoned"]["reason"]
    assert "process 4242 on worker-7" in silent["error_message"]
    assert reap(engine, dt.timedelta(minutes=10), now=NOW) == []  # nothing left to reap
    engine.dispose()


def test_a_late_terminal_write_from_the_owner_still_wins(db_url: str) -> None:
    """An abandoned run takes its owner's newer snapshot; a completed one ignores it."""
    engine = make_engine(db_url)
    create_schema(engine)
    write(engine, run_row("stalled", "running", dt.timedelta(hours=1), seq=10))
    assert len(reap(engine, 600, now=NOW)) == 1
    write(engine, run_row("stalled", "running", dt.timedelta(hours=1), seq=9))  # a stale replay
    assert rows(engine)["stalled"]["status"] == "abandoned"
    write(engine, run_row("stalled", "completed", dt.timedelta(0), seq=11))
    found = rows(engine)["stalled"]
    assert (found["status"], found["seq"], found["error_message"]) == ("completed", 11, None)
    write(engine, run_row("stalled", "running", dt.timedelta(0), seq=12))
    assert rows(engine)["stalled"]["status"] == "completed"
    engine.dispose()


def test_heartbeat_refreshes_all_active_runs_in_one_statement(db_url: str) -> None:
    """Every interval, one UPDATE moves ``updated_at`` of every running run of the writer."""
    engine = make_engine(db_url)
    statements: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE WORKFLOW_HISTORY"):
            statements.append(statement)

    processor = WorkflowHistorySpanProcessor(engine, heartbeat_interval=0.1)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    assert processor.force_flush(10_000)  # tables created
    release = threading.Event()

    def hold(n: int) -> None:
        with (
            workflow_run("long", workflow_id=f"long-{n}", tracer_provider=provider) as run,
            run.step("wait"),
        ):
            release.wait(30)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(rows(engine)) == 3, "three running rows")
        first = {k: v["updated_at"] for k, v in rows(engine).items()}
        beats = processor.stats["heartbeats"]
        wait_for(lambda: processor.stats["heartbeats"] >= beats + 2, "two more heartbeats")
        later = {k: v["updated_at"] for k, v in rows(engine).items()}
        assert all(later[k] > first[k] for k in first)
        assert len(statements) == processor.stats["heartbeats"]  # one statement per beat
        assert all(" IN " in s.upper() and "status" in s for s in statements)
    finally:
        release.set()
        for thread in threads:
            thread.join()
    assert processor.force_flush(10_000)
    assert {v["status"] for v in rows(engine).values()} == {"completed"}
    processor.shutdown(5_000)


def test_reap_command(tmp_path: Path) -> None:
    """``flowtel reap --older-than 10m`` as JSON and text; a missing database reaps nothing."""
    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)
    create_schema(engine)
    write(engine, run_row("silent", "running", dt.timedelta(hours=2)))
    runner = CliRunner()
    done = runner.invoke(reap_command, ["--db", url, "--older-than", "10m", "--json"])
    assert done.exit_code == 0, done.output
    found = json.loads(done.output)
    assert found["older_than_s"] == 600
    assert [r["run_id"] for r in found["reaped"]] == ["silent"]
    again = runner.invoke(reap_command, ["--db", url, "--older-than", "10m"])
    assert "No running run has been silent for more than 10m" in again.output
    missing = runner.invoke(reap_command, ["--db", f"sqlite:///{tmp_path}/none.db"])
    assert missing.exit_code == 3 and not (tmp_path / "none.db").exists()
    assert "does not exist" in missing.output
    wrong = runner.invoke(reap_command, ["--db", url, "--older-than", "soon"])
    assert wrong.exit_code == 2 and "is not a duration" in wrong.output
    engine.dispose()


def test_reaping_closes_the_runs_open_steps_and_stops_its_clock(db_url: str) -> None:
    """The run's running steps become abandoned at the reap; durations end at the reap."""
    from tests.test_queries import step_row

    engine = make_engine(db_url)
    create_schema(engine)
    write(
        engine,
        run_row("silent", "running", dt.timedelta(minutes=30)),
        run_row("beating", "running", dt.timedelta(minutes=1)),
    )
    begun = NOW - dt.timedelta(minutes=25)
    done = step_row("silent", 1, "a", started_at=begun, completed_at=begun, duration_ms=0)
    open_step = step_row(
        "silent", 2, "b", status="running", started_at=begun, completed_at=None, duration_ms=None
    )
    other = step_row(
        "beating", 1, "a", status="running", started_at=begun, completed_at=None, duration_ms=None
    )
    with engine.begin() as connection:
        upsert_rows(connection, [], [done, open_step, other])
    assert len(reap(engine, dt.timedelta(minutes=10), now=NOW)) == 1
    with engine.connect() as connection:
        steps = connection.execute(
            sa.text(
                "SELECT run_id, step_name, status, completed_at, "
                "duration_ms FROM workflow_step_history"
            )
        ).all()
    found = {(r.run_id, r.step_name): r for r in steps}
    closed = found[("silent", "b")]
    assert (closed.status, closed.duration_ms) == ("abandoned", 25 * 60 * 1000)
    assert closed.completed_at is not None
    assert found[("silent", "a")].status == "completed"
    assert (found[("beating", "a")].status, found[("beating", "a")].completed_at) == (
        "running",
        None,
    )
    run = rows(engine)["silent"]
    assert run["duration_ms"] == 30 * 60 * 1000 and run["completed_at"] is not None
    engine.dispose()


@pytest.mark.parametrize("path", ["upsert", "bulk"])
def test_a_stalled_owner_still_lands_its_reaped_steps_end(db_url: str, path: str) -> None:
    """A process that was only stalled writes its step's end over the reaper's ``abandoned``."""
    from exporters.db.bulk import bulk_upsert_rows
    from tests.test_queries import step_row

    write_steps = upsert_rows if path == "upsert" else bulk_upsert_rows
    every_column = {c.name: None for c in workflow_step_history.columns if c.name != "id"}
    engine = make_engine(db_url)
    request_cleanup = engine.dispose
    create_schema(engine)
    write(engine, run_row("stalled", "running", dt.timedelta(minutes=30)))
    begun = NOW - dt.timedelta(minutes=25)
    open_step = every_column | step_row(
        "stalled", 1, "a", status="running", started_at=begun, completed_at=None, duration_ms=None
    )
    with engine.begin() as connection:
        write_steps(connection, [], [open_step])
    assert len(reap(engine, dt.timedelta(minutes=10), now=NOW)) == 1
    late = {**open_step, "status": "completed", "completed_at": NOW, "duration_ms": 1500}
    another = every_column | step_row(
        "stalled", 2, "a", started_at=begun, completed_at=NOW, duration_ms=1
    )
    another["span_id"] = open_step["span_id"]  # another step under the same key: still refused
    try:
        with engine.begin() as connection:
            write_steps(connection, [], [late])
        with engine.begin() as connection:
            assert write_steps(connection, [], [another]).step_conflicts == 1
        with engine.connect() as connection:
            stored = connection.execute(
                sa.text("SELECT step_index, status, duration_ms FROM workflow_step_history")
            ).all()
        assert [tuple(r) for r in stored] == [(1, "completed", 1500)]
    finally:
        request_cleanup()


def test_show_stops_counting_an_abandoned_runs_duration(tmp_path: Path) -> None:
    from exporters.cli import main
    from tests.test_queries import step_row

    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)
    create_schema(engine)
    write(engine, run_row("silent-run-0001", "running", dt.timedelta(minutes=30)))
    open_step = step_row(
        "silent-run-0001",
        1,
        "b",
        status="running",
        started_at=NOW - dt.timedelta(minutes=25),
        completed_at=None,
        duration_ms=None,
    )
    with engine.begin() as connection:
        upsert_rows(connection, [], [open_step])
    reap(engine, dt.timedelta(minutes=10), now=NOW)
    engine.dispose()
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["show", "silent-run-0001", "--db", url])
    assert shown.exit_code == 0, shown.output
    assert "abandoned" in shown.output
    assert "so far" not in shown.output and "…" not in shown.output.split("Steps")[-1]
    assert "30m" in shown.output or "30:00" in shown.output or "1800" in shown.output
