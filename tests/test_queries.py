"""Tests for exporters.query.store: filters, order, lookup and JSON on every supported database."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from exporters.db.engine import make_engine
from exporters.db.schema import create_schema, workflow_history, workflow_step_history
from exporters.query.store import (
    AmbiguousRunError,
    HistoryStore,
    RunNotFoundError,
)

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
_span_ids = itertools.count(1)


def run_row(run_id: str, **values: Any) -> dict[str, Any]:
    """A complete workflow_history row; *values* override the defaults."""
    row: dict[str, Any] = {
        "run_id": run_id,
        "workflow_id": "provision_srv-0001",
        "workflow_name": "provision_server",
        "server_id": "srv-0001",
        "device_type": "s2_c2_small",
        "status": "completed",
        "started_at": T0,
        "completed_at": T0 + dt.timedelta(seconds=90),
        "duration_ms": 90_000,
        "steps_completed": 23,
        "total_steps": 23,
        "metadata": {"context_data": {"server_id": "srv-0001", "ipmi_password": "[REDACTED]"}},
        "seq": 1,
    }
    row.update(values)
    return row


def step_row(run_id: str, index: int, name: str, attempt: int = 1, **values: Any) -> dict[str, Any]:
    """A complete workflow_step_history row."""
    row: dict[str, Any] = {
        "run_id": run_id,
        "span_id": f"{next(_span_ids):016x}",
        "step_index": index,
        "step_name": name,
        "attempt": attempt,
        "status": "completed",
        "started_at": T0 + dt.timedelta(seconds=index),
        "completed_at": T0 + dt.timedelta(seconds=index, milliseconds=500),
        "duration_ms": 500,
    }
    row.update(values)
    return row


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A fresh history database with the schema, on SQLite, PostgreSQL and MariaDB."""
    engine = make_engine(db_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> HistoryStore:
    """A HistoryStore over the fresh database."""
    return HistoryStore(engine)


def add(
    engine: Engine, runs: list[dict[str, Any]], steps: list[dict[str, Any]] | None = None
) -> None:
    """Insert run and step rows (one statement each: the rows may set different columns)."""
    with engine.begin() as conn:
        for row in runs:
            conn.execute(insert(workflow_history).values(row))
        for row in steps or []:
            conn.execute(insert(workflow_step_history).values(row))


def test_list_runs_is_newest_first(engine: Engine, store: HistoryStore) -> None:
    """Runs come back ordered by started_at, newest first."""
    add(
        engine,
        [
            run_row("aaaa-1", started_at=T0),
            run_row("bbbb-2", started_at=T0 + dt.timedelta(hours=2)),
            run_row("cccc-3", started_at=T0 + dt.timedelta(hours=1)),
        ],
    )
    assert [r.run_id for r in store.list_runs()] == ["bbbb-2", "cccc-3", "aaaa-1"]


def test_list_runs_breaks_started_at_ties_by_insertion(engine: Engine, store: HistoryStore) -> None:
    """Runs that started at the same instant are listed last-inserted first."""
    add(engine, [run_row("aaaa-1"), run_row("bbbb-2")])
    assert [r.run_id for r in store.list_runs()] == ["bbbb-2", "aaaa-1"]


def test_list_runs_filters_by_status(engine: Engine, store: HistoryStore) -> None:
    """Only runs with the given status are listed."""
    add(engine, [run_row("aaaa-1"), run_row("bbbb-2", status="failed")])
    assert [r.run_id for r in store.list_runs(status="failed")] == ["bbbb-2"]


def test_list_runs_filters_by_workflow_name(engine: Engine, store: HistoryStore) -> None:
    """Only runs of the named workflow are listed."""
    add(engine, [run_row("aaaa-1"), run_row("bbbb-2", workflow_name="decommission_server")])
    assert [r.run_id for r in store.list_runs(workflow="decommission_server")] == ["bbbb-2"]


def test_list_runs_filters_by_workflow_id_and_server(engine: Engine, store: HistoryStore) -> None:
    """workflow_id and server_id filters combine."""
    add(
        engine,
        [
            run_row("aaaa-1"),
            run_row("bbbb-2", workflow_id="provision_srv-0002", server_id="srv-0002"),
            run_row("cccc-3", workflow_id="provision_srv-0002", server_id="srv-0003"),
        ],
    )
    runs = store.list_runs(workflow_id="provision_srv-0002", server_id="srv-0002")
    assert [r.run_id for r in runs] == ["bbbb-2"]


def test_list_runs_since_is_inclusive_and_until_exclusive(
    engine: Engine, store: HistoryStore
) -> None:
    """since keeps runs started at that instant; until drops them."""
    hour = dt.timedelta(hours=1)
    add(engine, [run_row(f"run-{i}", started_at=T0 + i * hour) for i in range(4)])
    runs = store.list_runs(since=T0 + hour, until=T0 + 3 * hour)
    assert [r.run_id for r in runs] == ["run-2", "run-1"]


def test_list_runs_takes_naive_times_as_utc(engine: Engine, store: HistoryStore) -> None:
    """A naive since bound means UTC."""
    add(
        engine,
        [run_row("aaaa-1", started_at=T0), run_row("bbbb-2", started_at=T0.replace(hour=14))],
    )
    runs = store.list_runs(since=dt.datetime(2026, 11, 1, 13, 0))
    assert [r.run_id for r in runs] == ["bbbb-2"]


def test_list_runs_respects_limit(engine: Engine, store: HistoryStore) -> None:
    """At most limit runs, the newest ones."""
    add(engine, [run_row(f"run-{i}", started_at=T0 + dt.timedelta(minutes=i)) for i in range(5)])
    assert [r.run_id for r in store.list_runs(limit=2)] == ["run-4", "run-3"]


def test_list_runs_rejects_zero_limit(store: HistoryStore) -> None:
    """A limit below one is a ValueError that names the value."""
    with pytest.raises(ValueError, match="limit must be at least 1, not 0"):
        store.list_runs(limit=0)


def test_summary_timestamps_are_utc_aware(engine: Engine, store: HistoryStore) -> None:
    """Timestamps read back are timezone-aware UTC."""
    add(engine, [run_row("aaaa-1")])
    assert store.list_runs()[0].started_at == T0
    assert store.list_runs()[0].started_at.tzinfo == dt.UTC  # type: ignore[union-attr]


def test_summary_to_json_has_stable_keys_and_iso_utc(engine: Engine, store: HistoryStore) -> None:
    """to_json gives the documented keys in order and ISO 8601 UTC strings."""
    add(engine, [run_row("aaaa-1")])
    data = store.list_runs()[0].to_json()
    assert list(data) == [
        "run_id", "workflow_name", "workflow_id", "status", "server_id", "device_type",
        "started_at", "completed_at", "duration_ms", "steps_completed", "total_steps",
        "current_step", "error_type", "error_message", "trace_id",
    ]  # fmt: skip
    assert data["started_at"] == "2026-11-01T12:00:00.000000Z"
    assert data == json.loads(json.dumps(data))


def test_get_run_by_full_run_id(engine: Engine, store: HistoryStore) -> None:
    """A full run id finds its run and says so."""
    add(engine, [run_row("3f2a9c1e-0000"), run_row("3f2a9c1e-1111")])
    detail = store.get_run("3f2a9c1e-0000")
    assert (detail.run_id, detail.matched_by) == ("3f2a9c1e-0000", "run_id")


def test_get_run_by_unique_prefix(engine: Engine, store: HistoryStore) -> None:
    """A unique prefix of at least four characters finds its run."""
    add(engine, [run_row("3f2a9c1e-0000"), run_row("77aa0000-1111")])
    detail = store.get_run("3f2a")
    assert (detail.run_id, detail.matched_by) == ("3f2a9c1e-0000", "prefix")


def test_get_run_rejects_three_character_prefix(engine: Engine, store: HistoryStore) -> None:
    """Prefixes shorter than four characters do not match, and the error says why."""
    add(engine, [run_row("3f2a9c1e-0000")])
    with pytest.raises(RunNotFoundError, match="at least 4 characters"):
        store.get_run("3f2")


def test_get_run_prefix_treats_like_wildcards_literally(
    engine: Engine, store: HistoryStore
) -> None:
    """'%' and '_' in a reference are not LIKE wildcards."""
    add(engine, [run_row("3f2a9c1e-0000")])
    with pytest.raises(RunNotFoundError):
        store.get_run("3f2%")


def test_get_run_ambiguous_prefix_lists_candidates(engine: Engine, store: HistoryStore) -> None:
    """A prefix of several run ids raises AmbiguousRunError naming them."""
    add(engine, [run_row("3f2a9c1e-0000"), run_row("3f2a0000-1111")])
    with pytest.raises(AmbiguousRunError) as info:
        store.get_run("3f2a")
    assert {"3f2a9c1e-0000", "3f2a0000-1111"} == set(info.value.candidates)


def test_get_run_by_workflow_id_takes_latest_and_counts_others(
    engine: Engine, store: HistoryStore
) -> None:
    """A workflow id resolves to its latest run and notes how many other runs it has."""
    add(
        engine,
        [
            run_row("old-run-1", started_at=T0),
            run_row("new-run-2", started_at=T0 + dt.timedelta(days=1)),
            run_row("mid-run-3", started_at=T0 + dt.timedelta(hours=1)),
        ],
    )
    detail = store.get_run("provision_srv-0001")
    assert (detail.run_id, detail.matched_by, detail.other_runs) == ("new-run-2", "workflow_id", 2)


def test_get_run_unknown_suggests_closest_workflow_id(engine: Engine, store: HistoryStore) -> None:
    """An unknown reference names the closest existing workflow id."""
    add(engine, [run_row("aaaa-1", workflow_id="provision_srv-0042")])
    with pytest.raises(RunNotFoundError, match="did you mean 'provision_srv-0042'") as info:
        store.get_run("provision_srv-0024")
    assert info.value.ref == "provision_srv-0024"


def test_get_run_unknown_suggests_closest_run_id(engine: Engine, store: HistoryStore) -> None:
    """A mistyped run id prefix suggests the run id it resembles."""
    add(engine, [run_row("3f2a9c1e-aaaa-bbbb")])
    with pytest.raises(RunNotFoundError) as info:
        store.get_run("3f2b9c1e")
    assert info.value.suggestion == "3f2a9c1e-aaaa-bbbb"


def test_get_run_unknown_in_empty_database_has_no_suggestion(store: HistoryStore) -> None:
    """With nothing recorded, the error suggests nothing."""
    with pytest.raises(RunNotFoundError) as info:
        store.get_run("provision_srv-0042")
    assert info.value.suggestion is None
    assert "did you mean" not in str(info.value)


def test_get_run_steps_are_ordered_by_index_then_attempt(
    engine: Engine, store: HistoryStore
) -> None:
    """Steps come back by step_index, then attempt, whatever the insertion order."""
    add(
        engine,
        [run_row("aaaa-1")],
        [
            step_row("aaaa-1", 2, "verify_ipmi_reachable", attempt=2),
            step_row("aaaa-1", 3, "push_bios_settings"),
            step_row("aaaa-1", 1, "select_machine"),
            step_row("aaaa-1", 2, "verify_ipmi_reachable", attempt=1, status="retrying"),
            step_row("bbbb-2", 1, "select_machine"),
        ],
    )
    steps = store.get_run("aaaa-1").steps
    assert [(s.step_index, s.attempt) for s in steps] == [(1, 1), (2, 1), (2, 2), (3, 1)]


def test_get_run_exposes_context_and_failed_step(engine: Engine, store: HistoryStore) -> None:
    """The redacted context comes from metadata; failed_step is the failing attempt."""
    add(
        engine,
        [run_row("aaaa-1", status="failed")],
        [
            step_row("aaaa-1", 1, "select_machine"),
            step_row(
                "aaaa-1", 2, "wait_for_commissioning", status="failed", error_type="TimeoutError"
            ),
        ],
    )
    detail = store.get_run("aaaa-1")
    assert detail.context["ipmi_password"] == "[REDACTED]"
    assert detail.failed_step.step_name == "wait_for_commissioning"  # type: ignore[union-attr]


def test_detail_to_json_nests_steps(engine: Engine, store: HistoryStore) -> None:
    """RunDetail.to_json includes the steps as JSON objects with ISO timestamps."""
    add(engine, [run_row("aaaa-1")], [step_row("aaaa-1", 1, "select_machine")])
    data = json.loads(json.dumps(store.get_run("aaaa-1").to_json()))
    assert (
        data["steps"][0]["step_name"],
        data["steps"][0]["started_at"],
    ) == ("select_machine", "2026-11-01T12:00:01.000000Z")


def test_from_url_opens_the_database(engine: Engine) -> None:
    """HistoryStore.from_url reads the same file as an engine on that URL."""
    add(engine, [run_row("aaaa-1")])
    store = HistoryStore.from_url(engine.url)
    try:
        assert [r.run_id for r in store.list_runs()] == ["aaaa-1"]
    finally:
        store.close()


def test_lookup_is_case_sensitive_on_every_database(engine: Engine, store: HistoryStore) -> None:
    """Run ids and prefixes match exactly, even where the database compares case-insensitively."""
    add(engine, [run_row("abcd-1111")])
    for ref in ("ABCD-1111", "ABCD"):
        with pytest.raises(RunNotFoundError):
            store.get_run(ref)


def test_list_runs_filters_by_device_type(engine: Engine, store: HistoryStore) -> None:
    """Only runs about the given device type are listed."""
    add(engine, [run_row("aaaa-1"), run_row("bbbb-2", device_type="g1_c4_gpu")])
    assert [r.run_id for r in store.list_runs(device_type="g1_c4_gpu")] == ["bbbb-2"]


def test_runs_without_a_start_time_come_last(engine: Engine, store: HistoryStore) -> None:
    """Old-system rows without started_at follow the others, and a time window drops them."""
    add(engine, [run_row("undated", started_at=None), run_row("dated")])
    assert [r.run_id for r in store.list_runs()] == ["dated", "undated"]
    assert [r.run_id for r in store.list_runs(since=T0)] == ["dated"]
    assert [r.run_id for r in store.list_runs(limit=1)] == ["dated"]


def test_get_run_prefix_falls_back_to_like(tmp_path: Any) -> None:
    """A prefix whose range cannot be bounded (last code point) is still found by LIKE."""
    engine = make_engine(f"sqlite:///{tmp_path / 'edge.db'}")
    create_schema(engine)
    add(engine, [run_row("abcd\U0010ffff-1")])
    try:
        assert HistoryStore(engine).get_run("abcd\U0010ffff").run_id == "abcd\U0010ffff-1"
    finally:
        engine.dispose()


def test_get_run_redacts_what_other_writers_left_in_clear(
    engine: Engine, store: HistoryStore
) -> None:
    """Secrets in the context, messages and log lines of a row are masked on the way out."""
    url = "postgresql://admin:hunter2@db/x"
    add(
        engine,
        [run_row("aaaa-1", error_message=f"cannot reach {url}",
                 metadata={"context_data": {"bmc_password": "hunter2", "site": "fra1"}})],
        [step_row("aaaa-1", 1, "select_machine", status="failed", error_message=f"{url} down",
                  logs=[{"message": f"retrying {url}"}])],
    )  # fmt: skip
    detail = store.get_run("aaaa-1")
    assert detail.context == {"bmc_password": "[REDACTED]", "site": "fra1"}
    assert "hunter2" not in json.dumps(detail.to_json())


def test_detail_json_adds_trace_url_and_failed_step(engine: Engine, store: HistoryStore) -> None:
    """to_json ends with the trace link and the failing attempt (null when none)."""
    trace = {"trace_id": "0af7", "url": "https://jaeger.example/trace/0af7"}
    add(
        engine,
        [run_row("aaaa-1", status="failed", metadata={"trace": trace}), run_row("bbbb-2")],
        [step_row("aaaa-1", 2, "verify_ipmi_reachable", status="failed", error_type="OSError")],
    )
    data = store.get_run("aaaa-1").to_json()
    assert list(data)[-2:] == ["trace_url", "failed_step"]
    assert data["trace_url"] == "https://jaeger.example/trace/0af7"
    assert (data["failed_step"]["step_name"], data["failed_step"]["error_type"]) == (
        "verify_ipmi_reachable",
        "OSError",
    )
    assert store.get_run("bbbb-2").to_json()["failed_step"] is None
