"""Every ``--json`` output writes its times in one ISO 8601 UTC form: ``…T12:00:03.250000Z``.

Covered: runs, show (its columns and the times flowtel wrote into the run's metadata), stats,
reap, db prune, db upgrade/current/check, spool status/replay and demo. A ``+00:00`` offset, a
time without microseconds or any other offset fails the test.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from exporters.cli import main
from exporters.db.engine import make_engine
from exporters.db.schema import create_schema
from exporters.query.records import iso_utc, json_value

from .test_cli import FAILED_ID, flowtel_process, seed
from .test_queries import T0, add, run_row

ONE_FORM = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
USER_NOTE = "2026-10-02T12:00:00+00:00"  # a context value: printed as the user wrote it
TIME_LIKE = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def times(value: Any) -> list[str]:
    """Every string in *value* (parsed JSON) that looks like a date and time."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in times(v)]
    if isinstance(value, list):
        return [t for v in value for t in times(v)]
    return [value] if isinstance(value, str) and TIME_LIKE.match(value) else []


def json_of(*args: str) -> Any:
    """Run flowtel in-process and parse its JSON output."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_form(data: Any, expected: int | None = None) -> None:
    found = times(data)
    assert all(ONE_FORM.match(t) for t in found), found
    if expected is not None:
        assert len(found) >= expected, found


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The test_cli history plus a silent running run (for reap) and writer-style metadata."""
    url = f"sqlite:///{tmp_path / 'times.db'}"
    engine = make_engine(url)
    create_schema(engine)
    seed(engine)
    stale = T0 - dt.timedelta(days=30)
    add(
        engine,
        [
            run_row(
                "silent-0001",
                workflow_id="wf-silent",
                status="running",
                started_at=stale,
                completed_at=None,
                duration_ms=None,
                updated_at=stale,
                metadata={
                    "timestamps": {"started_at": "2026-10-02T12:00:00.000001+00:00"},
                    "steps": [{"name": "a", "started_at": "2026-10-02T12:00:00+00:00"}],
                    "context_data": {"note": USER_NOTE},
                },
            )
        ],
    )
    engine.dispose()
    return url


def test_iso_utc_is_the_one_form() -> None:
    """Aware times in any zone and naive (UTC) times print the same way."""
    paris = dt.timezone(dt.timedelta(hours=1))
    assert (
        iso_utc(dt.datetime(2026, 11, 1, 13, 0, 3, tzinfo=paris)) == "2026-11-01T12:00:03.000000Z"
    )
    assert iso_utc(dt.datetime(2026, 11, 1, 12, 0, 3, 250000)) == "2026-11-01T12:00:03.250000Z"
    assert json_value({"at": "2026-11-01T12:00:03+00:00"}) == {"at": "2026-11-01T12:00:03+00:00"}


def test_runs_json(db: str) -> None:
    assert_one_form(json_of("runs", "--db", db, "--json"), expected=5)


def test_show_json_including_the_metadata_flowtel_wrote(db: str) -> None:
    """Columns and the metadata's times share the form; the user's context is left as written."""
    assert_one_form(json_of("show", FAILED_ID, "--db", db, "--json"), expected=10)
    silent = json_of("show", "silent-0001", "--db", db, "--json")
    context = silent["metadata"].pop("context_data")
    assert_one_form(silent, expected=4)
    assert context == {"note": USER_NOTE}


def test_stats_json(db: str) -> None:
    assert_one_form(json_of("stats", "--db", db, "--since", "2026-09-01", "--json"), expected=2)


def test_reap_json(db: str) -> None:
    data = json_of("reap", "--db", db, "--older-than", "1d", "--json")
    assert [run["run_id"] for run in data["reaped"]] == ["silent-0001"]
    assert_one_form(data, expected=1)


def test_prune_json(db: str) -> None:
    data = json_of("db", "prune", "--db", db, "--older-than", "1d", "--dry-run", "--json")
    assert_one_form(data, expected=1)


@pytest.mark.parametrize("command", [["upgrade"], ["current"], ["check"]])
def test_db_json_has_no_other_form(db: str, command: list[str]) -> None:
    assert_one_form(json_of("db", *command, "--db", db, "--json"))


@pytest.mark.parametrize("command", ["status", "replay"])
def test_spool_json_has_no_other_form(db: str, command: str) -> None:
    assert_one_form(json_of("spool", command, "--db", db, "--json"))


def test_demo_json_has_no_other_form(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    done = flowtel_process("demo", "--runs", "2", "--step-delay", "0", "--json", "--db", url)
    assert done.returncode == 0, done.stderr
    assert_one_form(json.loads(done.stdout))
