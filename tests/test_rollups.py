"""The per-hour rollups: kept right by triggers whoever writes, rebuilt by ``db upgrade``, read
by stats.

Every test compares the rollup tables with :func:`expected_rollups`, a recomputation from the
base tables in Python, cell by cell: after in-process recording, spool replay, ingest, the
reaper, retention, hand-written updates and deletes, and steps written before their run. On
MariaDB no trigger keeps them (stats read the base tables there): the same tests assert that
its rollup tables stay empty and that stats still answer.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider

from exporters import make_engine, migrations
from exporters.cli.db import db as db_command
from exporters.db.check import check_schema
from exporters.db.rollups import RELATIVE_ERROR, SPANS, bucket_of, has_rollups
from exporters.db.schema import (
    create_schema,
    metadata,
    workflow_history,
    workflow_rollup,
    workflow_step_history,
    workflow_step_rollup,
)
from exporters.db.upsert import upsert_rows
from exporters.ingest.server import IngestServer
from exporters.ops.reaper import reap
from exporters.ops.retention import prune
from exporters.query.records import GroupStats, StatsReport
from exporters.query.rollup_read import period_ranges
from exporters.query.stats import compute_stats
from exporters.spool.replay import Replayer
from instrumentation import workflow_run
from tests.conftest import History
from tests.test_ingest import four_runs_in_process_and_through
from tests.test_ingest import ingest as ingest  # the fixture, on every backend
from tests.test_many_writers import finish, start_writers
from tests.test_migrations import downgrade
from tests.test_migrations import empty_url as empty_url  # the fixture, on every backend
from tests.test_queries import T0, run_row, step_row
from tests.test_spool import _snapshots_of_real_runs

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_HOUR = dt.timedelta(hours=1)
Cells = dict[tuple[Any, ...], tuple[int, int | None]]


def _periods(started: dt.datetime) -> list[tuple[int, int]]:
    """(span, period) of the hour, the day and the week holding *started*."""
    started = started if started.tzinfo else started.replace(tzinfo=dt.UTC)
    seconds = (started - _EPOCH) // dt.timedelta(seconds=1)
    return [(span, seconds // span) for span in SPANS]


def expected_rollups(engine: sa.Engine) -> tuple[Cells, Cells]:
    """Both rollups recomputed from the base tables: cell -> (count, longest duration), runs
    and attempts in a final status only, failed attempts per error type."""
    with engine.connect() as connection:
        runs = connection.execute(sa.select(workflow_history)).mappings().all()
        steps = connection.execute(sa.select(workflow_step_history)).mappings().all()
    cells: Counter[tuple[Any, ...]] = Counter()
    longest: dict[tuple[Any, ...], int] = {}

    def count(key: tuple[Any, ...], duration_ms: int | None) -> None:
        cells[key] += 1
        if duration_ms is not None:
            longest[key] = max(duration_ms, longest.get(key, duration_ms))

    of_run = {}
    for run in runs:
        if run["started_at"] is None:
            continue
        of_run[run["run_id"]] = (_periods(run["started_at"]), run["workflow_name"] or "")
        if run["status"] in ("running", "pending"):  # active: counted from the table
            continue
        for period in of_run[run["run_id"]][0]:
            key = ("run", *period, of_run[run["run_id"]][1], run["status"])
            count((*key, bucket_of(run["duration_ms"])), run["duration_ms"])
    for step in steps:
        if step["run_id"] not in of_run or step["status"] == "running":
            continue
        periods, name = of_run[step["run_id"]]
        error = (step["error_type"] or "") if step["status"] == "failed" else ""
        for period in periods:
            key = ("step", *period, name, step["step_index"], step["step_name"], step["status"])
            count((*key, error, bucket_of(step["duration_ms"])), step["duration_ms"])
    found = {k: (n, longest.get(k)) for k, n in cells.items()}
    return (
        {k[1:]: v for k, v in found.items() if k[0] == "run"},
        {k[1:]: v for k, v in found.items() if k[0] == "step"},
    )


def stored_rollups(engine: sa.Engine) -> tuple[Cells, Cells]:
    """What the rollup tables hold: cell -> (count, longest duration)."""
    with engine.connect() as connection:
        runs = connection.execute(sa.select(workflow_rollup)).all()
        steps = connection.execute(sa.select(workflow_step_rollup)).all()
    return (
        {tuple(r[:5]): (int(r.runs), r.max_ms) for r in runs},
        {tuple(r[:8]): (int(r.attempts), r.max_ms) for r in steps},
    )


def assert_rollups_right(engine: sa.Engine, *, deleted: bool = False) -> None:
    """The rollups equal a recomputation (counts exactly; the longest exactly, or after
    deletions within the cell's bucket and never below the truth); MariaDB keeps none."""
    stored = stored_rollups(engine)
    if engine.dialect.name == "mysql":
        with engine.connect() as connection:
            assert not has_rollups(connection)
        assert stored == ({}, {})
        return
    expected = expected_rollups(engine)
    for got, want in zip(stored, expected, strict=True):
        assert {k: n for k, (n, _) in got.items()} == {k: n for k, (n, _) in want.items()}
        for key, (_, longest) in want.items():
            kept = got[key][1]
            if deleted and longest is not None and kept is not None:
                assert bucket_of(kept) == bucket_of(longest) and kept >= longest
            else:
                assert kept == longest, key


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def add(engine: sa.Engine, runs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> None:
    with engine.begin() as connection:
        if runs:
            connection.execute(sa.insert(workflow_history), runs)
        if steps:
            connection.execute(sa.insert(workflow_step_history), steps)


def test_runs_recorded_in_process_leave_rollups_equal_to_the_base_tables(
    history: History, tracer_provider: TracerProvider
) -> None:
    for n in range(4):
        try:
            with workflow_run("provision_server", tracer_provider=tracer_provider) as run:
                with run.step("select_machine"):
                    pass
                with run.step("commission"):
                    if n == 2:
                        raise TimeoutError("still commissioning")
        except TimeoutError:
            pass
    with workflow_run("decommission", tracer_provider=tracer_provider) as run, run.step("wipe"):
        history.flush()  # a running run and step are counted too, then move on
        assert_rollups_right(history.engine)
    history.flush()
    assert_rollups_right(history.engine)
    if history.engine.dialect.name != "mysql":
        runs, steps = stored_rollups(history.engine)
        hourly = Counter(k[3] for k in runs if k[0] == 3600 for _ in range(runs[k][0]))
        assert hourly == {"completed": 4, "failed": 1}
        assert {k[4] for k in steps} == {"select_machine", "commission", "wipe"}


@pytest.fixture(scope="module")
def spooled_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Every snapshot of six real runs, spooled once for the module (it takes a minute)."""
    return _snapshots_of_real_runs(tmp_path_factory.mktemp("spooled"))


def test_spool_replay_leaves_rollups_equal_to_the_base_tables(
    db_url: str, tmp_path: Path, spooled_runs: tuple[Path, str]
) -> None:
    source, key = spooled_runs
    engine = make_engine(db_url)
    try:
        create_schema(engine)
        for copy in range(2):  # replayed twice: the second replay changes nothing
            replayer = Replayer(Path(shutil.copytree(source, tmp_path / f"copy{copy}")), key)
            while replayer.replay_chunk(engine):
                pass
            assert_rollups_right(engine)
    finally:
        engine.dispose()


def test_ingested_spans_leave_rollups_equal_to_the_base_tables(
    ingest: IngestServer, db_url: str, tmp_path: Path
) -> None:
    exporter = OTLPSpanExporter(endpoint=f"{ingest.url}/v1/traces")
    four_runs_in_process_and_through(exporter, db_url, tmp_path)
    engine = make_engine(db_url)
    try:
        assert_rollups_right(engine)
    finally:
        engine.dispose()


def test_reaping_stuck_runs_moves_them_to_abandoned_in_the_rollups(engine: sa.Engine) -> None:
    now = T0 + dt.timedelta(hours=2)
    stale = T0 - dt.timedelta(hours=1)
    runs = [
        run_row(
            f"stuck-{n}",
            status="running",
            completed_at=None,
            duration_ms=None,
            updated_at=stale,
            started_at=stale,
        )
        for n in range(3)
    ]
    steps = [step_row("stuck-0", 1, "commission", status="running", started_at=stale,
                      completed_at=None, duration_ms=None)]  # fmt: skip
    with engine.begin() as connection:
        upsert_rows(connection, runs, steps)
    assert_rollups_right(engine)
    assert len(reap(engine, dt.timedelta(minutes=10), now=now)) == 3
    assert_rollups_right(engine)
    if engine.dialect.name != "mysql":
        runs_cells, step_cells = stored_rollups(engine)
        assert {k[3] for k in runs_cells} == {"abandoned"}
        assert {k[5] for k in step_cells} == {"abandoned"}


def test_pruning_subtracts_the_deleted_runs_and_steps(engine: sa.Engine) -> None:
    rng = random.Random(5)
    runs, steps = [], []
    for n in range(60):
        started = T0 - dt.timedelta(days=rng.choice((1, 40, 100)), minutes=n)
        status = rng.choice(("completed", "failed"))
        run_id = f"run-{n}"
        runs.append(run_row(run_id, status=status, started_at=started,
                            completed_at=started + dt.timedelta(seconds=90),
                            duration_ms=rng.randint(1_000, 900_000)))  # fmt: skip
        steps += [step_row(run_id, i, f"step_{i}", started_at=started,
                           duration_ms=rng.randint(0, 60_000)) for i in (1, 2)]  # fmt: skip
    add(engine, runs, steps)
    assert_rollups_right(engine)
    month = dt.timedelta(days=30)
    assert prune(engine, month, status="completed", batch_size=7, now=T0).runs_deleted
    assert_rollups_right(engine, deleted=True)
    assert prune(engine, dt.timedelta(days=90), batch_size=7, now=T0).runs_deleted
    assert_rollups_right(engine, deleted=True)


def test_a_hand_written_update_from_running_to_failed_moves_the_run(engine: sa.Engine) -> None:
    add(engine, [run_row("r", status="running", completed_at=None, duration_ms=None)],
        [step_row("r", 1, "commission", status="running", duration_ms=None)])  # fmt: skip
    assert_rollups_right(engine)
    with engine.begin() as connection:
        connection.execute(sa.text(
            "UPDATE workflow_history SET status = 'failed', duration_ms = 1234 WHERE run_id = 'r'"
        ))  # fmt: skip
        connection.execute(sa.text(
            "UPDATE workflow_step_history SET status = 'failed', duration_ms = 99 "
            "WHERE run_id = 'r'"
        ))  # fmt: skip
    assert_rollups_right(engine)
    with engine.begin() as connection:  # updates that change nothing counted leave them alone
        connection.execute(sa.text("UPDATE workflow_history SET steps_completed = 1, seq = 9"))
    assert_rollups_right(engine)


def test_steps_written_before_their_run_count_once_it_arrives_and_move_with_its_start(
    engine: sa.Engine,
) -> None:
    add(engine, [], [step_row("late", 1, "a", duration_ms=70), step_row("late", 2, "b")])
    assert stored_rollups(engine)[1] == {}  # no run row yet: in no window
    add(engine, [run_row("late"), run_row("nameless", workflow_name=None)],
        [step_row("nameless", 1, "a")])  # fmt: skip
    assert_rollups_right(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.update(workflow_history)
            .where(workflow_history.c.run_id == "late")
            .values(started_at=T0 + 5 * _HOUR, workflow_name="renamed")
        )
    assert_rollups_right(engine)
    with engine.begin() as connection:
        connection.execute(sa.delete(workflow_history).where(workflow_history.c.run_id == "late"))
    assert_rollups_right(engine, deleted=True)
    with engine.begin() as connection:  # its steps, deleted after it, change nothing more
        connection.execute(
            sa.delete(workflow_step_history).where(workflow_step_history.c.run_id == "late")
        )
    assert_rollups_right(engine, deleted=True)


def test_db_upgrade_from_0006_fills_the_rollups_from_stored_rows(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine, "0006", backup=False)
        with engine.connect() as connection:
            assert not sa.inspect(connection).has_table("workflow_rollup")
        report = check_schema(engine)
        assert {d.table for d in report.differences} == {
            "workflow_duration_bucket", "workflow_rollup", "workflow_step_rollup",
        } and not report.blocking  # fmt: skip
        rng = random.Random(3)
        runs = [run_row(f"old-{n}", started_at=T0 - n * _HOUR / 3,
                        status=rng.choice(("completed", "failed", "running")),
                        duration_ms=rng.randint(0, 10**7)) for n in range(40)]  # fmt: skip
        steps = [step_row(f"old-{n}", i, f"s{i}", duration_ms=rng.randint(0, 10**5))
                 for n in range(40) for i in (1, 2, 3)]  # fmt: skip
        add(engine, runs, steps)
        result = CliRunner().invoke(db_command, ["upgrade", "--db", empty_url])
        assert result.exit_code == 0, result.output
        assert f"from 0006 to {migrations.HEAD_REVISION}" in result.output
        assert_rollups_right(engine)
        assert check_schema(engine).matches
    finally:
        engine.dispose()


_ERRORS = ("TimeoutError", "TimeoutError", "ValueError", "", None)
_MESSAGES = ("no answer", "bad value", "", None)


def _seed_hours(engine: sa.Engine, runs_count: int = 400, hours: int = 80) -> None:
    """*runs_count* runs of two workflows started over *hours* hours from ``T0``, two steps
    each in every status, failed ones with several error types (also empty or none) and
    messages (also empty or none)."""
    rng = random.Random(11)
    runs, steps = [], []
    for n in range(runs_count):
        started = T0 + dt.timedelta(seconds=rng.randint(0, hours * 3600))
        status = rng.choices(("completed", "failed", "cancelled", "running"), (8, 2, 1, 1))[0]
        ms = None if status == "running" else int(rng.lognormvariate(11, 1))
        name = rng.choice(("provision_server", "decommission"))
        runs.append(run_row(f"r{n}", workflow_name=name, status=status, started_at=started,
                            duration_ms=ms))  # fmt: skip
        for i in (1, 2):
            step_status = rng.choice(("completed", "completed", "failed", "retrying", "running"))
            step_started = started + dt.timedelta(seconds=rng.randint(0, 3600))
            steps.append(step_row(f"r{n}", i, f"{name}_{i}", status=step_status,
                                  duration_ms=int(rng.lognormvariate(8, 1.5)),
                                  started_at=step_started, error_type=rng.choice(_ERRORS),
                                  error_message=rng.choice(_MESSAGES)))  # fmt: skip
    add(engine, runs, steps)


def _counts(group: GroupStats) -> tuple[int, ...]:
    return (group.runs, group.completed, group.failed, group.cancelled, group.abandoned,
            group.running)  # fmt: skip


def _close(got: float | None, exact: float | None) -> bool:
    if got is None or exact is None:
        return got is exact
    return abs(got - exact) <= RELATIVE_ERROR * exact + 1e-9


def _compare(rolled: StatsReport, base: StatsReport) -> None:
    assert [w.workflow_name for w in rolled.workflows] == [w.workflow_name for w in base.workflows]
    for mine, exact in zip(rolled.workflows, base.workflows, strict=True):
        assert _counts(mine.totals) == _counts(exact.totals)
        assert mine.totals.success_rate == exact.totals.success_rate
        assert _close(mine.totals.p50_ms, exact.totals.p50_ms)
        assert _close(mine.totals.p95_ms, exact.totals.p95_ms)
        assert mine.totals.max_ms == exact.totals.max_ms
        assert [(p.start, p.runs, p.completed, p.failed, p.running) for p in mine.trend] == [
            (p.start, p.runs, p.completed, p.failed, p.running) for p in exact.trend
        ]
        for a, b in zip(mine.trend, exact.trend, strict=True):
            assert _close(a.p50_ms, b.p50_ms) and _close(a.p95_ms, b.p95_ms)
        assert [s[:7] for s in map(_step_tuple, mine.steps)] == [
            s[:7] for s in map(_step_tuple, exact.steps)
        ]
        for a, b in zip(mine.steps, exact.steps, strict=True):
            assert _close(a.median_ms, b.median_ms) and _close(a.p95_ms, b.p95_ms)
            assert a.max_ms == b.max_ms and a.median_sample == b.median_sample
        assert mine.top_failing_steps == exact.top_failing_steps


def _step_tuple(step: Any) -> tuple[Any, ...]:
    return (step.step_index, step.step_name, step.attempts, step.completed, step.failures,
            step.retries, step.skipped)  # fmt: skip


@pytest.mark.parametrize("every", [None, _HOUR, dt.timedelta(days=1)])
def test_stats_from_rollups_have_the_base_tables_counts_and_percentiles_within_the_bound(
    engine: sa.Engine, every: dt.timedelta | None
) -> None:
    _seed_hours(engine)
    since, until = T0 + dt.timedelta(minutes=17), T0 + dt.timedelta(hours=70, minutes=41)
    with engine.connect() as connection:
        base = compute_stats(connection, since=since, until=until, every=every, source="base")
        if engine.dialect.name == "mysql":
            with pytest.raises(ValueError, match="keeps no rollups"):
                compute_stats(connection, since=since, until=until, source="rollups")
            auto = compute_stats(connection, since=since, until=until, every=every)
            assert auto == base
            return
        rolled = compute_stats(connection, since=since, until=until, every=every,
                               source="rollups")  # fmt: skip
    assert sum(w.totals.runs for w in base.workflows) > 300
    _compare(rolled, base)


def test_one_workflow_and_a_window_inside_one_hour_read_from_rollups_match_the_base(
    engine: sa.Engine,
) -> None:
    _seed_hours(engine, 150)
    windows = [(T0 + dt.timedelta(minutes=5), T0 + dt.timedelta(minutes=50)), (T0, T0 + 9 * _HOUR)]
    with engine.connect() as connection:
        for since, until in windows:
            kwargs: dict[str, Any] = {"since": since, "until": until, "workflow": "decommission"}
            rolled = "auto" if engine.dialect.name == "mysql" else "rollups"  # MariaDB: none
            _compare(compute_stats(connection, source=rolled, **kwargs),
                     compute_stats(connection, source="base", **kwargs))  # fmt: skip


def test_a_database_before_revision_0007_gets_stats_from_the_base_tables(
    engine: sa.Engine,
) -> None:
    _seed_hours(engine, 50)
    with engine.begin() as connection:
        from exporters.db import rollups

        rollups.uninstall(connection)
        for table in (workflow_step_rollup, workflow_rollup):
            table.drop(connection)
    with engine.connect() as connection:
        with pytest.raises(ValueError, match=r"keeps no rollups.*flowtel db upgrade"):
            compute_stats(connection, since=T0, until=T0 + 90 * _HOUR, source="rollups")
        auto = compute_stats(connection, since=T0, until=T0 + 90 * _HOUR)
        base = compute_stats(connection, since=T0, until=T0 + 90 * _HOUR, source="base")
    assert auto == base and sum(w.totals.runs for w in auto.workflows) == 50
    metadata.drop_all(engine)


def test_by_splits_and_sub_hour_intervals_cannot_be_forced_onto_the_rollups(
    engine: sa.Engine,
) -> None:
    with engine.connect() as connection:
        with pytest.raises(ValueError, match="by= splits"):
            compute_stats(connection, since=T0, by="device_type", source="rollups")
        with pytest.raises(ValueError, match="not a whole number of hours"):
            compute_stats(connection, since=T0, until=T0 + _HOUR,
                          every=dt.timedelta(minutes=30), source="rollups")  # fmt: skip


def test_four_processes_writing_at_once_leave_postgresql_rollups_exact_without_errors(
    server_database: Any,
) -> None:
    """Concurrent writers' statement-level triggers lock cells in one order: no deadlock,
    no write error, nothing spooled, and the rollups equal a recomputation."""
    url = str(server_database["postgresql"])
    engine = make_engine(url)
    try:
        metadata.drop_all(engine)
        reports = finish(start_writers(url, processes=4, threads=4, runs=25))
        for report in reports:
            assert report["flushed"] and report["errors"] == []
            assert report["events_dropped"] == report["rows_spooled"] == 0
        assert_rollups_right(engine)
        assert sum(n for n, _ in stored_rollups(engine)[0].values()) == len(SPANS) * 400
    finally:
        engine.dispose()


def test_downgrading_to_0006_drops_the_rollups_and_their_triggers_and_rows_still_write(
    empty_url: str,
) -> None:
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine, backup=False)
        downgrade(empty_url, "0006")
        with engine.connect() as connection:
            assert not sa.inspect(connection).has_table("workflow_rollup")
            assert not has_rollups(connection)
        add(engine, [run_row("after")], [step_row("after", 1, "a")])  # no trigger left behind
        with engine.connect() as connection:
            report = compute_stats(connection, since=T0, until=T0 + _HOUR)
        assert [w.totals.runs for w in report.workflows] == [1]
    finally:
        engine.dispose()


def test_a_run_and_its_steps_written_in_one_statement_are_counted_once(engine: sa.Engine) -> None:
    """The writer's one-statement batch (``WITH runs AS (<run upsert>) <step upsert>``)."""
    run = run_row("together")
    step = step_row("together", 1, "a", duration_ms=40)
    add(engine, [], [step_row("together", 2, "b", duration_ms=9)])  # one step before the run
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            runs = sa.insert(workflow_history).values(run).cte("runs")
            statement = sa.insert(workflow_step_history).values(step).add_cte(runs)
            connection.execute(statement)
        else:  # no data-modifying WITH on SQLite and MariaDB: two statements
            connection.execute(sa.insert(workflow_history).values(run))
            connection.execute(sa.insert(workflow_step_history).values(step))
    assert_rollups_right(engine)
    if engine.dialect.name != "mysql":
        hourly = {k[4]: n for k, (n, _) in stored_rollups(engine)[1].items() if k[0] == 3600}
        assert hourly == {"a": 1, "b": 1}


def _rolled_matching_base(engine: sa.Engine, since: dt.datetime, until: dt.datetime) -> Any:
    """The window's stats from the rollups (MariaDB, which keeps none: as chosen), after
    checking them against the base tables' with :func:`_compare`."""
    rolled = "auto" if engine.dialect.name == "mysql" else "rollups"
    with engine.connect() as connection:
        mine = compute_stats(connection, since=since, until=until, source=rolled)
        exact = compute_stats(connection, since=since, until=until, source="base")
    _compare(mine, exact)
    return mine


def test_a_failure_a_day_after_its_runs_start_at_a_windows_edge_is_counted_from_the_rollups(
    engine: sa.Engine,
) -> None:
    """A window's partial first hour is read from the base tables, its failed attempts bounded by
    the last write of that hour's runs: a run started in it whose step failed 29 hours later is
    still counted, as the base tables count it."""
    late = T0 + dt.timedelta(hours=29)
    runs = [run_row("edge-late", status="failed", started_at=T0 + dt.timedelta(minutes=20),
                    completed_at=late + dt.timedelta(minutes=5), duration_ms=103_500_000,
                    updated_at=late + dt.timedelta(minutes=5))]  # fmt: skip
    steps = [
        step_row("edge-late", 1, "select_machine", started_at=T0 + dt.timedelta(minutes=20)),
        step_row(
            "edge-late",
            2,
            "burn_in",
            status="failed",
            started_at=late,
            error_type="LateError",
            error_message="burn-in failed",
        ),
    ]
    for n in range(30):  # failures later in the window, through the same status index
        started = T0 + dt.timedelta(hours=2 + n)
        runs.append(run_row(f"later-{n}", status="failed", started_at=started,
                            completed_at=started + _HOUR, updated_at=started + _HOUR))  # fmt: skip
        steps.append(step_row(f"later-{n}", 2, "burn_in", status="failed", started_at=started,
                              error_type="TimeoutError", error_message="no answer"))  # fmt: skip
    add(engine, runs, steps)
    since, until = T0 + dt.timedelta(minutes=17), T0 + dt.timedelta(hours=40)
    mine = _rolled_matching_base(engine, since, until)
    (failing,) = mine.workflows[0].top_failing_steps
    assert (failing.step_name, failing.failures) == ("burn_in", 31)


def test_a_step_renamed_between_whole_hours_and_an_edge_counts_once_under_its_latest_name(
    engine: sa.Engine,
) -> None:
    """Step 2 is ``burn_in`` in the window's whole hours (rollup cells) and ``burn_in_v2`` in
    its partial first hour (base rows): both sources count under one name per index, the
    greatest, as the base tables' ``GROUP BY step_index`` does — one row, every attempt."""
    runs, steps = [], []
    for n in range(6):
        started = T0 + dt.timedelta(minutes=20 if n < 2 else 60 * n + 5)
        name = "burn_in_v2" if n < 2 else "burn_in"
        runs.append(run_row(f"rename-{n}", status="completed", started_at=started,
                            duration_ms=60_000 + n))  # fmt: skip
        steps.append(step_row(f"rename-{n}", 2, name, started_at=started,
                              duration_ms=1_000 * (n + 1)))  # fmt: skip
    add(engine, runs, steps)
    since, until = T0 + dt.timedelta(minutes=17), T0 + dt.timedelta(hours=8)
    mine = _rolled_matching_base(engine, since, until)
    (step,) = mine.workflows[0].steps
    assert (step.step_index, step.step_name, step.attempts, step.max_ms) == (
        2,
        "burn_in_v2",
        6,
        6_000,
    )


@pytest.mark.parametrize("every", [None, dt.timedelta(days=1), dt.timedelta(days=7)])
def test_stats_over_whole_weeks_read_from_rollups_match_the_base_tables(
    engine: sa.Engine, every: dt.timedelta | None
) -> None:
    """A 35-day window holds whole weeks, read from the weekly cells (days and hours around
    them): counts and failures per error type exact, percentiles within the bound."""
    _seed_hours(engine, 500, hours=40 * 24)
    since = T0 + dt.timedelta(days=2, minutes=17)
    until = since + dt.timedelta(days=35, hours=5)
    with engine.connect() as connection:
        base = compute_stats(connection, since=since, until=until, every=every, source="base")
        if engine.dialect.name == "mysql":
            assert compute_stats(connection, since=since, until=until, every=every) == base
            return
        weekly = connection.execute(
            sa.select(sa.func.sum(workflow_rollup.c.runs)).where(
                workflow_rollup.c.span_s == 7 * 86400,
                workflow_rollup.c.period * 7 * 86400 >= (since - _EPOCH).total_seconds(),
            )
        ).scalar()
        rolled = compute_stats(connection, since=since, until=until, every=every,
                               source="rollups")  # fmt: skip
    assert weekly and weekly > 100  # whole weeks inside the window hold runs
    assert sum(w.totals.runs for w in base.workflows) > 400
    assert any(w.top_failing_steps for w in base.workflows)
    _compare(rolled, base)


def test_a_hand_written_update_of_a_failed_steps_error_type_moves_its_rollup_cell(
    engine: sa.Engine,
) -> None:
    add(engine, [run_row("typed", status="failed")],
        [step_row("typed", 1, "a", status="failed", error_type="OldError")])  # fmt: skip
    with engine.begin() as connection:
        connection.execute(sa.update(workflow_step_history).values(error_type="NewError"))
    assert_rollups_right(engine)
    if engine.dialect.name != "mysql":
        errors = {k[6] for k in stored_rollups(engine)[1]}
        assert errors == {"NewError"}


def _make_rollups_as_revision_0007_left_them(engine: sa.Engine) -> None:
    """The step rollup without its error type column, no weekly cells, recorded as 0007."""
    with engine.begin() as connection:
        from exporters.db import rollups

        rollups.uninstall(connection)
        workflow_step_rollup.drop(connection)
        old = sa.MetaData()
        columns = [
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                      autoincrement=False)
            for c in workflow_step_rollup.columns
            if c.name != "error_type"
        ]  # fmt: skip
        sa.Table(workflow_step_rollup.name, old, *columns, sqlite_with_rowid=False).create(
            connection
        )
        connection.execute(sa.delete(workflow_rollup).where(workflow_rollup.c.span_s == 604800))
        migrations.stamp(connection, "0007")


def test_rollups_left_by_revision_0007_are_not_read_and_db_upgrade_rebuilds_them(
    engine: sa.Engine,
) -> None:
    """Stats never read rollups without weeks and error types (the base tables answer), the
    schema check does not block writes for it, and ``flowtel db upgrade`` makes the step
    rollup again and refills both from the stored rows."""
    _seed_hours(engine, 120)
    _make_rollups_as_revision_0007_left_them(engine)
    window = {"since": T0, "until": T0 + 90 * _HOUR}
    with engine.connect() as connection:
        assert not has_rollups(connection)
        auto = compute_stats(connection, **window)
        assert auto == compute_stats(connection, source="base", **window)
    report = check_schema(engine)
    assert ("workflow_step_rollup", "error_type") in {(d.table, d.name) for d in report.differences}
    assert not report.blocking
    result = CliRunner().invoke(db_command, ["upgrade", "--db", str(engine.url.render_as_string(
        hide_password=False))])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "from 0007 to 0008" in result.output
    assert check_schema(engine).matches
    assert_rollups_right(engine)
    with engine.connect() as connection:
        assert has_rollups(connection) is (engine.dialect.name != "mysql")


def test_downgrading_0008_to_0007_drops_the_rollups_stats_read_the_base_tables_and_rows_write(
    empty_url: str,
) -> None:
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine, backup=False)
        _seed_hours(engine, 60)
        downgrade(empty_url, "0007")
        with engine.connect() as connection:
            assert not sa.inspect(connection).has_table("workflow_step_rollup")
            assert not has_rollups(connection)
        add(engine, [run_row("after")], [step_row("after", 1, "a")])  # no trigger left behind
        with engine.connect() as connection:
            report = compute_stats(connection, since=T0, until=T0 + 90 * _HOUR)
        assert sum(w.totals.runs for w in report.workflows) == 61
        migrations.upgrade(engine, backup=False)
        assert_rollups_right(engine)
    finally:
        engine.dispose()


def test_a_failing_steps_example_is_its_latest_message_of_that_error_type_on_either_path(
    engine: sa.Engine,
) -> None:
    """The message shown is the latest failure's of that step and commonest error type, a
    failure without a message passed over, another error type's never taken, read the same
    from the rollups and from the base tables."""
    failures = [("first", 1, "TimeoutError"), ("newest", 3, "TimeoutError"),
                ("middle", 2, "TimeoutError"), ("", 4, "TimeoutError"),
                (None, 5, "TimeoutError"), ("other type", 6, "OSError")]  # fmt: skip
    runs, steps = [], []
    for n, (message, hour, error) in enumerate(failures):
        started = T0 + hour * _HOUR
        runs.append(run_row(f"f{n}", status="failed", started_at=started))
        steps.append(step_row(f"f{n}", 1, "burn_in", status="failed", started_at=started,
                              error_type=error, error_message=message))  # fmt: skip
    add(engine, runs, steps)
    window = {"since": T0, "until": T0 + 10 * _HOUR}
    rolled = "auto" if engine.dialect.name == "mysql" else "rollups"
    with engine.connect() as connection:
        for source in (rolled, "base"):
            report = compute_stats(connection, source=source, **window)
            (failing,) = report.workflows[0].top_failing_steps
            assert (failing.error_type, failing.error_count, failing.failures) == (
                "TimeoutError", 5, 6
            )  # fmt: skip
            assert failing.example_message == "newest"


def test_a_windows_hours_are_covered_once_each_by_the_longest_periods_that_fit() -> None:
    """Every whole hour of a window lies in exactly one period range read, and no range holds
    a whole period of the next length (it would have been read as that)."""
    rng = random.Random(8)
    for _ in range(500):
        first = rng.randint(0, 24 * 7 * 60)
        last = first + rng.choice([0, 1, 5, 30, 200, 24 * 40])
        ranges = period_ranges(first, last, SPANS)
        hours = Counter(
            hour
            for span, low, high in ranges
            for hour in range(low * span // 3600, high * span // 3600)
        )
        assert hours == Counter(range(first, last))
        for span, low, high in ranges:
            assert low < high and span in SPANS
            longer = [s for s in SPANS if s > span]
            if longer:
                start, end = -(-low * span // longer[0]), high * span // longer[0]
                assert start >= end, (span, low, high)
