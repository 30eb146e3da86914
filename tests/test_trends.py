"""``flowtel stats --every``: runs per interval by outcome with p50/p95, and per-step p95/max."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from exporters.cli import main
from exporters.query.store import HistoryStore
from exporters.serve.app import create_app

from .test_queries import T0, add, run_row, step_row
from .test_queries import engine as engine  # the fixture, on every backend

HOUR = dt.timedelta(hours=1)


def seed(engine: Engine) -> None:
    """12:00-13:00: three completed (60, 120, 180 s) and one failed; 13:00-14:00 nothing;
    14:00-15:00: one completed (30 s) and one still running."""
    runs: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    for n, seconds in enumerate((60, 120, 180)):
        run_id = f"am-{n}"
        runs.append(run_row(run_id, started_at=T0 + dt.timedelta(minutes=10 * n),
                            duration_ms=seconds * 1000))  # fmt: skip
        steps.append(step_row(run_id, 1, "select_machine", duration_ms=100 * (n + 1)))
    runs.append(run_row("am-failed", status="failed", started_at=T0 + dt.timedelta(minutes=40),
                        duration_ms=5000))  # fmt: skip
    steps.append(step_row("am-failed", 1, "select_machine", status="failed", duration_ms=9000))
    runs.append(run_row("pm-0", started_at=T0 + 2 * HOUR + dt.timedelta(minutes=5),
                        duration_ms=30_000))  # fmt: skip
    runs.append(run_row("pm-running", status="running", completed_at=None, duration_ms=None,
                        started_at=T0 + 2 * HOUR + dt.timedelta(minutes=50)))  # fmt: skip
    add(engine, runs, steps)


def test_every_hour_gives_each_interval_its_outcomes_and_percentiles_empty_ones_included(
    engine: Engine,
) -> None:
    seed(engine)
    report = HistoryStore(engine).stats(since=T0, until=T0 + 3 * HOUR, every=HOUR)
    [entry] = report.workflows
    assert report.every_s == 3600
    assert [p.start for p in entry.trend] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    first, empty, last = entry.trend
    assert (first.runs, first.completed, first.failed) == (4, 3, 1)
    assert (first.p50_ms, first.p95_ms) == (120_000, 174_000)  # interpolated like percentile_cont
    assert (empty.runs, empty.p50_ms) == (0, None)
    assert (last.runs, last.completed, last.running, last.p50_ms) == (2, 1, 1, 30_000)


def test_intervals_are_aligned_to_the_hour_whatever_the_window_start(engine: Engine) -> None:
    seed(engine)
    report = HistoryStore(engine).stats(since=T0 + dt.timedelta(minutes=25),
                                        until=T0 + 2 * HOUR, every=HOUR)  # fmt: skip
    [entry] = report.workflows
    assert [p.start for p in entry.trend] == [T0, T0 + HOUR]
    assert entry.trend[0].runs == 1  # am-failed (12:40); am-0..am-2 started before 12:25


def test_steps_report_p95_over_completed_attempts_and_the_true_max(engine: Engine) -> None:
    seed(engine)
    report = HistoryStore(engine).stats(since=T0, until=T0 + 3 * HOUR)
    [step] = report.workflows[0].steps
    assert (step.median_ms, step.p95_ms, step.max_ms) == (200.0, 290.0, 300.0)


def test_an_interval_under_a_minute_or_too_many_intervals_is_refused(engine: Engine) -> None:
    store = HistoryStore(engine)
    with pytest.raises(ValueError, match="at least a minute"):
        store.stats(since=T0, until=T0 + HOUR, every=dt.timedelta(seconds=30))
    with pytest.raises(ValueError, match="more than 2000 intervals"):
        store.stats(since=T0 - dt.timedelta(days=90), until=T0, every=dt.timedelta(minutes=1))


def stats(engine: Engine, *args: str) -> Any:
    url = engine.url.render_as_string(hide_password=False)
    return CliRunner(env={"COLUMNS": "80"}).invoke(
        main, ["stats", "--db", url, "--since", "2026-11-01T12:00Z",
               "--until", "2026-11-01T15:00Z", *args],
    )  # fmt: skip


def test_flowtel_stats_every_prints_one_line_per_interval_at_80_columns(engine: Engine) -> None:
    seed(engine)
    result = stats(engine, "--every", "1h")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    trend = lines[next(i for i, line in enumerate(lines) if line.startswith("Per interval")) :]
    rows = [line for line in trend if line[:2] in ("12", "13", "14")]
    assert [row.split()[:3] for row in rows] == [
        ["12:00", "4", "1"], ["13:00", "0", "0"], ["14:00", "2", "0"],
    ]  # fmt: skip
    assert "2m" in rows[0] and "█" in rows[0] and "█" not in rows[1]


def test_flowtel_stats_every_json_has_the_trend_and_a_bad_interval_is_a_usage_error(
    engine: Engine,
) -> None:
    seed(engine)
    data = json.loads(stats(engine, "--every", "1h", "--json").output)
    trend = data["workflows"][0]["trend"]
    assert [point["runs"] for point in trend] == [4, 0, 2]
    assert trend[0]["start"] == "2026-11-01T12:00:00.000000Z"
    bad = stats(engine, "--every", "10s")
    assert bad.exit_code == 2 and "'--every'" in bad.output


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    seed(engine)
    app = create_app(engine.url.render_as_string(hide_password=False))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.flowtel.engine.dispose()


WINDOW = "since=2026-11-01T12:00Z&until=2026-11-01T15:00Z"


def test_api_stats_every_is_flowtel_stats_every_json(client: TestClient, engine: Engine) -> None:
    cli = json.loads(stats(engine, "--every", "1h", "--json").output)
    answer = client.get(f"/api/stats?{WINDOW}&every=1h")
    assert answer.status_code == 200
    assert answer.json()["workflows"][0]["trend"] == cli["workflows"][0]["trend"]
    bad = client.get(f"/api/stats?{WINDOW}&every=10s")
    assert bad.status_code == 400 and "every" in bad.text


def test_stats_page_every_draws_a_column_per_interval_and_a_table(client: TestClient) -> None:
    page = client.get(f"/stats?{WINDOW}&every=1h").text
    chart = page[page.index('<svg class="chart trend"') : page.index("</svg>", page.index("trend"))]
    assert chart.count("<title>") == 3
    assert "12:00:00 UTC: 4 runs, 1 failed, p50 2m 00s, p95 2m 54s" in chart
    assert "13:00:00 UTC: 0 runs, 0 failed, p50 -, p95 -" in chart
    assert page.count('<td class="mono">2026-11-01 1') == 3
    assert 'name="every" value="1h"' in page
