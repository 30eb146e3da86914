"""Tests for exporters.query.stats and ``flowtel stats``: counts, percentiles, steps, groups."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.query import tally
from exporters.query.stats import percentile
from exporters.query.store import HistoryStore, StatsReport

from .test_cli import UNREACHABLE, invoke
from .test_queries import T0, add, run_row, step_row

WEEK = {"since": T0, "until": T0 + dt.timedelta(days=7)}
MINUTE = 60_000


def history() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Seven runs in the week after T0 (and one before it) with known outcomes and steps."""
    runs = []
    for n, (status, minutes, device) in enumerate(
        [
            ("completed", 1, "s2_c2_small"),
            ("completed", 2, "s2_c2_small"),
            ("completed", 3, "g1_c4_gpu"),
            ("completed", 4, "g1_c4_gpu"),
            ("failed", 99, "g1_c4_gpu"),  # a failed run's duration is not a completion time
            ("cancelled", 50, "s2_c2_small"),
            ("running", None, None),
        ]
    ):
        context = {"server_ip": f"10.0.0.{n % 2}"} if device else {}
        runs.append(
            run_row(
                f"run-{n}",
                status=status,
                device_type=device,
                started_at=T0 + dt.timedelta(hours=n),
                duration_ms=minutes * MINUTE if minutes else None,
                metadata={"context_data": context},
            )
        )
    runs.append(run_row("too-old", started_at=T0 - dt.timedelta(seconds=1), status="failed"))
    runs.append(run_row("other", workflow_name="decommission_server", started_at=T0))
    steps = [step_row(f"run-{n}", 1, "select_machine", duration_ms=100 * (n + 1)) for n in range(5)]
    steps += [
        step_row("run-0", 2, "verify_ipmi_reachable", status="retrying"),
        step_row("run-0", 2, "verify_ipmi_reachable", attempt=2),
        step_row("run-1", 3, "update_firmware", status="skipped"),
        step_row("run-4", 2, "verify_ipmi_reachable", status="failed", error_type="ConnectionError",
                 error_message="10.30.0.4 unreachable"),
        step_row("run-3", 4, "wait_for_commissioning", status="failed", error_type="TimeoutError",
                 error_message="late once"),
        step_row("run-5", 4, "wait_for_commissioning", status="failed", error_type="TimeoutError",
                 error_message="late again"),
        step_row("run-2", 4, "wait_for_commissioning", status="failed", error_type="OSError"),
        step_row("too-old", 4, "wait_for_commissioning", status="failed", error_type="OSError"),
    ]  # fmt: skip
    return runs, steps


@pytest.fixture
def store(db_url: str) -> Iterator[HistoryStore]:
    """A HistoryStore over the history above, on SQLite, PostgreSQL and MariaDB."""
    engine = make_engine(db_url)
    create_schema(engine)
    add(engine, *history())
    yield HistoryStore(engine)
    engine.dispose()


def provisioning(report: StatsReport) -> Any:
    """The provision_server entry of *report*."""
    return next(w for w in report.workflows if w.workflow_name == "provision_server")


@pytest.mark.parametrize(
    ("values", "fraction", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
        ([float(v) for v in range(1, 21)], 0.95, 19.05),
        ([7.0], 0.95, 7.0),
        ([1.0, 9.0], 1.0, 9.0),
        ([], 0.5, None),
    ],
)
def test_percentile_interpolates_like_percentile_cont(
    values: list[float], fraction: float, expected: float | None
) -> None:
    """Linear interpolation between the closest ranks, as PostgreSQL's percentile_cont."""
    assert percentile(values, fraction) == pytest.approx(expected)


def test_median_and_p95_of_counted_values_equal_percentile_of_the_values_written_out() -> None:
    """The rollups' and trends' percentiles come from value -> count multisets: the same
    interpolation as :func:`percentile` over every value repeated its count."""
    rng = random.Random(5)
    for _ in range(2000):
        values = [float(rng.randint(0, rng.choice([1, 3, 50]))) for _ in range(rng.randint(1, 40))]
        expected = (percentile(sorted(values), 0.5), percentile(sorted(values), 0.95))
        assert tally.median_and_p95(Counter(values)) == pytest.approx(expected)
    assert tally.median_and_p95(Counter()) == (None, None)


def test_percentile_rejects_a_fraction_outside_0_1() -> None:
    """A fraction above 1 is a ValueError naming it."""
    with pytest.raises(ValueError, match="not 95"):
        percentile([1.0], 95)


def test_runs_by_outcome_and_success_rate(store: HistoryStore) -> None:
    """Every outcome is counted; success is completed over the runs that ended."""
    totals = provisioning(store.stats(**WEEK)).totals
    counts = (totals.runs, totals.completed, totals.failed, totals.cancelled, totals.running)
    assert counts == (7, 4, 1, 1, 1)
    assert totals.success_rate == pytest.approx(4 / 6)


def test_durations_are_percentiles_of_completed_runs(store: HistoryStore) -> None:
    """p50, p95 and max come from the completed runs' durations only."""
    totals = provisioning(store.stats(**WEEK)).totals
    assert (totals.p50_ms, totals.p95_ms, totals.max_ms) == pytest.approx(
        (2.5 * MINUTE, 3.85 * MINUTE, 4 * MINUTE)
    )


def test_window_is_since_inclusive_until_exclusive(store: HistoryStore) -> None:
    """A run at `since` counts, one just before does not, nor one at `until`."""
    report = store.stats(since=T0, until=T0 + dt.timedelta(hours=2))
    assert provisioning(report).totals.runs == 2


def test_workflows_are_listed_by_name_and_filterable(store: HistoryStore) -> None:
    """Each workflow has its own entry; --workflow keeps one."""
    names = [w.workflow_name for w in store.stats(**WEEK).workflows]
    assert names == ["decommission_server", "provision_server"]
    only = store.stats(**WEEK, workflow="decommission_server").workflows
    assert [(w.workflow_name, w.totals.runs) for w in only] == [("decommission_server", 1)]


def test_step_attempts_failures_retries_skips_and_median(store: HistoryStore) -> None:
    """Per step: attempts, failures, retries, skips and the median completed duration."""
    steps = {s.step_name: s for s in provisioning(store.stats(**WEEK)).steps}
    ipmi = steps["verify_ipmi_reachable"]
    assert (ipmi.attempts, ipmi.failures, ipmi.retries, ipmi.median_ms) == (3, 1, 1, 500)
    assert steps["update_firmware"].skipped == 1
    assert steps["select_machine"].median_ms == 300
    assert [s.step_index for s in provisioning(store.stats(**WEEK)).steps] == [1, 2, 3, 4]


def test_busy_windows_take_step_medians_from_a_sample(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above MEDIAN_SAMPLE_RUNS runs, medians come from a sample (said so); counts stay exact."""
    full = {s.step_name: s for s in provisioning(store.stats(**WEEK)).steps}["select_machine"]
    monkeypatch.setattr(tally, "MEDIAN_SAMPLE_RUNS", 3)  # 8 runs in the window
    sampled = {s.step_name: s for s in provisioning(store.stats(**WEEK)).steps}["select_machine"]
    assert (full.attempts, full.median_sample) == (5, 5)
    assert (sampled.attempts, sampled.completed) == (5, 5)
    assert 0 < sampled.median_sample < 5
    url = store.engine.url.render_as_string(hide_password=False)
    assert "medians over a sample" in invoke("stats", "--db", url, *WINDOW).output


def test_top_failing_steps_with_their_most_common_error(store: HistoryStore) -> None:
    """The step failing most comes first, with its commonest error type and one message."""
    failing = provisioning(store.stats(**WEEK)).top_failing_steps
    first = failing[0]
    assert (first.step_name, first.failures, first.error_type, first.error_count) == (
        "wait_for_commissioning", 3, "TimeoutError", 2
    )  # fmt: skip
    assert first.example_message in ("late once", "late again")
    assert [f.step_name for f in failing] == ["wait_for_commissioning", "verify_ipmi_reachable"]
    assert len(provisioning(store.stats(**WEEK, top=1)).top_failing_steps) == 1


def test_by_device_type_splits_the_runs(store: HistoryStore) -> None:
    """--by device_type: one group per value, the most runs first, missing values named."""
    groups = provisioning(store.stats(**WEEK, by="device_type")).groups
    summary = [(g.group, g.runs, g.completed, g.failed) for g in groups]
    assert summary == [
        ("g1_c4_gpu", 3, 2, 1),
        ("s2_c2_small", 3, 2, 0),
        ("(none)", 1, 0, 0),
    ]
    assert groups[0].p50_ms == pytest.approx(3.5 * MINUTE)


def test_by_context_key_reads_the_metadata_json(store: HistoryStore) -> None:
    """--by server_ip groups by metadata.context_data.server_ip on every database."""
    groups = provisioning(store.stats(**WEEK, by="server_ip")).groups
    assert {g.group: g.runs for g in groups} == {"10.0.0.0": 3, "10.0.0.1": 3, "(none)": 1}


@pytest.mark.parametrize("key", ["server ip", "a'b", "$.x", ""])
def test_by_rejects_keys_that_are_not_plain(store: HistoryStore, key: str) -> None:
    """Only letters, digits, '_' and '-' reach a JSON path."""
    with pytest.raises(ValueError, match="cannot group by"):
        store.stats(**WEEK, by=key)


def test_report_json_is_stable(store: HistoryStore) -> None:
    """to_json: stable keys, ISO times, nested records as objects; it survives json.dumps."""
    data = json.loads(json.dumps(store.stats(**WEEK, by="device_type").to_json()))
    assert list(data) == ["since", "until", "by", "workflows", "every_s"]
    assert data["since"] == "2026-11-01T12:00:00.000000Z"
    entry = data["workflows"][1]
    assert list(entry) == [
        "workflow_name", "totals", "steps", "top_failing_steps", "groups", "trend",
    ]  # fmt: skip
    assert list(entry["totals"]) == [
        "group", "runs", "completed", "failed", "cancelled", "abandoned", "running",
        "success_rate", "p50_ms", "p95_ms", "max_ms",
    ]  # fmt: skip
    assert entry["top_failing_steps"][0]["error_type"] == "TimeoutError"
    assert list(entry["steps"][0]) == [
        "step_index", "step_name", "attempts", "completed", "failures", "retries", "skipped",
        "median_ms", "median_sample", "p95_ms", "max_ms",
    ]  # fmt: skip


def test_unnamed_workflows_are_grouped_under_none(tmp_path: Path) -> None:
    """Rows written by the old system (no workflow_name) are reported, not dropped."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    create_schema(engine)
    add(engine, [run_row("old-1", workflow_name=None)])
    report = HistoryStore(engine).stats(**WEEK)
    engine.dispose()
    assert [w.workflow_name for w in report.workflows] == ["(none)"]


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A SQLite history with the runs above."""
    url = f"sqlite:///{tmp_path / 'stats.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add(engine, *history())
    engine.dispose()
    return url


WINDOW = ("--since", "2026-11-01T12:00", "--until", "2026-11-08")


def test_stats_table_shows_rates_durations_and_failing_steps(db: str) -> None:
    """The table carries the headline figures, the failing step and its error."""
    result = invoke("stats", "--db", db, *WINDOW)
    assert result.exit_code == 0, result.output
    assert "provision_server  7 runs · 66.7% success · p50 2m 30s · p95 3m 51s" in result.output
    assert re.search(r"wait_for_commissioning +3  TimeoutError \(2/3\)", result.output)
    assert "decommission_server" in result.output
    assert "medians over a sample" not in result.output  # a small window: every run counts


def test_stats_json_carries_the_same_facts_as_the_table(db: str) -> None:
    """--json parses and holds the numbers the table prints."""
    table = invoke("stats", "--db", db, *WINDOW, "--by", "device_type").output
    data = json.loads(invoke("stats", "--db", db, *WINDOW, "--by", "device_type", "--json").stdout)
    entry = next(w for w in data["workflows"] if w["workflow_name"] == "provision_server")
    assert f"{entry['totals']['runs']} runs" in table
    assert f"{entry['totals']['success_rate'] * 100:.1f}% success" in table
    failing = entry["top_failing_steps"][0]
    assert f"{failing['error_type']} ({failing['error_count']}/{failing['failures']})" in table
    assert [g["group"] for g in entry["groups"]] == ["g1_c4_gpu", "s2_c2_small", "(none)"]
    assert all(g["group"] in table for g in entry["groups"])


def test_stats_default_window_is_the_last_7_days(tmp_path: Path) -> None:
    """Without --since, runs from the last week count and older ones do not."""
    url = f"sqlite:///{tmp_path / 'recent.db'}"
    engine = make_engine(url)
    create_schema(engine)
    now = dt.datetime.now(dt.UTC)
    add(engine, [run_row("new", started_at=now - dt.timedelta(days=6)),
                 run_row("old", started_at=now - dt.timedelta(days=8))])  # fmt: skip
    engine.dispose()
    data = json.loads(invoke("stats", "--db", url, "--json").stdout)
    assert [w["totals"]["runs"] for w in data["workflows"]] == [1]


def test_stats_with_an_empty_window_suggests_a_wider_one(db: str) -> None:
    """Nothing in the window: say so and how to widen it."""
    result = invoke("stats", "--db", db, "--since", "2030-01-01")
    assert (result.exit_code, "--since 30d" in result.output) == (0, True)


def test_stats_on_missing_database_exits_3_naming_the_fix(tmp_path: Path) -> None:
    """No database file: exit 3 naming `flowtel db upgrade`, also with --json (no report)."""
    url = f"sqlite:///{tmp_path / 'none.db'}"
    for args in ([], ["--json"]):
        result = invoke("stats", "--db", url, *args)
        assert (result.exit_code, "flowtel db upgrade" in result.output) == (3, True)


def test_stats_bad_by_is_a_usage_error(db: str) -> None:
    """A --by that is not a plain key exits 2 naming the option."""
    result = invoke("stats", "--db", db, "--by", "a'b")
    assert (result.exit_code, "'--by'" in result.output) == (2, True)


def test_stats_unreachable_database_exits_3_without_the_password() -> None:
    """An unreachable database is one masked-URL line and exit status 3."""
    result = invoke("stats", "--db", UNREACHABLE)
    assert result.exit_code == 3
    assert "flowtel:***@127.0.0.1:1" in result.output
    assert "s3cret-pw" not in result.output


def test_legacy_success_rows_count_as_completed(db_url: str) -> None:
    """The old system's ``success`` status counts as completed: in the rate and the durations."""
    engine = make_engine(db_url)
    create_schema(engine)
    add(
        engine,
        [
            run_row("legacy-1", status="success", duration_ms=2 * MINUTE),
            run_row("legacy-2", status="failed", started_at=T0 + dt.timedelta(minutes=1)),
        ],
    )
    totals = provisioning(HistoryStore(engine).stats(**WEEK)).totals
    engine.dispose()
    assert (totals.runs, totals.completed, totals.failed) == (2, 1, 1)
    assert (totals.success_rate, totals.max_ms) == (0.5, 2 * MINUTE)
