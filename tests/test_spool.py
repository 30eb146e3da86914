"""The spool on disk: private, one per database, torn records skipped, replays idempotent."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.cli.spool import spool as spool_command
from exporters.db.check import prepare_schema
from exporters.db.schema import metadata, workflow_history, workflow_step_history
from exporters.db.upsert import upsert_rows
from exporters.spool.files import Spool, spool_directory, spool_files, spool_key
from exporters.spool.format import read_header, read_records
from exporters.spool.replay import Replayer, replay_spool
from instrumentation import workflow_run

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
UNREACHABLE = "postgresql+psycopg://flowtel:secret@127.0.0.1:9/nowhere?connect_timeout=1"


def run_row(n: int, seq: int = 1, status: str = "completed") -> dict[str, Any]:
    """A complete run snapshot."""
    row: dict[str, Any] = {c.name: None for c in workflow_history.columns if c.name != "id"}
    row.update(
        run_id=f"run-{n:03d}",
        workflow_id=f"provision_srv-{n}",
        workflow_name="provision_server",
        status=status,
        started_at=NOW,
        completed_at=NOW + dt.timedelta(seconds=n, microseconds=7),
        steps_completed=1,
        total_steps=1,
        seq=seq,
        metadata={"steps": [{"name": "ünïcode ✓", "n": n}], "quote": 'it\'s "q"\n'},
    )
    return row


def step_row(n: int) -> dict[str, Any]:
    """A completed step snapshot of run *n*."""
    row: dict[str, Any] = {c.name: None for c in workflow_step_history.columns if c.name != "id"}
    row.update(
        run_id=f"run-{n:03d}",
        span_id=f"{n:016x}",
        step_index=1,
        step_name="select_machine",
        attempt=1,
        status="completed",
        started_at=NOW,
        logs=[{"message": "line\nbreak"}],
    )
    return row


def spooled(engine: sa.Engine, runs: int) -> Path:
    """The single spool file of *engine*'s database holding *runs* batches of one run + step."""
    directory = spool_directory(engine.url)
    assert directory is not None
    spool = Spool(directory, spool_key(engine.url))
    for n in range(runs):
        spool.append([run_row(n)], [step_row(n)])
    spool.seal()
    (path,) = spool_files(directory)
    return path


def counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        runs = connection.scalar(sa.select(sa.func.count()).select_from(workflow_history))
        steps = connection.scalar(sa.select(sa.func.count()).select_from(workflow_step_history))
    return int(runs or 0), int(steps or 0)


def test_spool_directory_is_private_and_one_per_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keyed by the URL without its password; 0700 directory, 0600 files; sensible defaults."""
    root = tmp_path / "root"
    first = spool_directory("postgresql+psycopg://u:secret1@db.example/history", root)
    again = spool_directory("postgresql+psycopg://u:changed@db.example/history", root)
    other = spool_directory("postgresql+psycopg://u:secret1@db.example/other", root)
    assert first == again != other
    assert first is not None and "secret" not in str(first)
    Spool(first, "k").append([run_row(1)], [step_row(1)])
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    assert [stat.S_IMODE(p.stat().st_mode) for p in spool_files(first)] == [0o600]

    monkeypatch.delenv("FLOWTEL_SPOOL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    beside = spool_directory(f"sqlite:///{tmp_path}/h.db")
    cached = spool_directory("postgresql+psycopg://u:pw@db.example/history")
    assert beside == tmp_path / "h.db-spool"
    assert cached is not None and cached.parent == tmp_path / "cache" / "flowtel" / "spool"
    assert spool_directory("sqlite://") is None


def test_records_read_back_as_they_were_written(tmp_path: Path) -> None:
    """Times, JSON with quotes, newlines and non-ASCII text survive the round trip."""
    spool = Spool(tmp_path / "s", "key")
    spool.append([run_row(1), run_row(2, seq=9, status="running")], [step_row(1)])
    spool.seal()
    (path,) = spool_files(tmp_path / "s")
    with open(path, "rb") as handle:
        header, offset = read_header(handle, str(path))
        assert header is not None and header.key == "key"
        decoded = [header.decode(value) for _, value in read_records(handle, "s", offset)]
    assert decoded == [("r", run_row(1)), ("r", run_row(2, 9, "running")), ("s", step_row(1))]


def test_torn_last_record_replays_everything_before_the_tear(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A file cut in the middle of its 15th record replays the 14 before, with a warning."""
    engine = make_engine(db_url)
    path = spooled(engine, 20)
    lines = path.read_bytes().splitlines(keepends=True)  # header, then run + step per batch
    kept = b"".join(lines[: 1 + 2 * 14]) + lines[1 + 2 * 14][:40]
    path.write_bytes(kept)
    caplog.set_level(logging.WARNING, logger="flowtel")
    result = replay_spool(engine)
    assert (result.error, result.rows, result.files, result.remaining_files) == (None, 28, 1, 0)
    assert counts(engine) == (14, 14)
    assert "torn spool record" in caplog.text
    engine.dispose()


def test_damaged_record_is_skipped_and_the_rest_replayed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flipped byte fails the checksum of one record only."""
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    path = spooled(engine, 10)
    data = bytearray(path.read_bytes())
    fifth_run = data.index(b'"run-004"')
    data[fifth_run + 2] ^= 0x01
    path.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="flowtel")
    assert replay_spool(engine).rows == 19
    assert counts(engine) == (9, 10)
    assert "damaged spool record" in caplog.text
    engine.dispose()


def test_files_of_another_database_or_unreadable_are_never_replayed(tmp_path: Path) -> None:
    """A foreign file stays; a file without a readable header is set aside as *.corrupt."""
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    directory = spool_directory(engine.url)
    assert directory is not None
    Spool(directory, "postgresql-0123456789abcdef").append([run_row(1)], [])
    unreadable = directory / "00000000000000000001-1-00000000.spool"
    unreadable.write_bytes(b"not a spool file\n")
    result = replay_spool(engine)
    assert (result.rows, result.remaining_files) == (0, 1)
    assert unreadable.with_name(unreadable.name + ".corrupt").exists()
    engine.dispose()


def _snapshots_of_real_runs(tmp_path: Path) -> tuple[Path, str]:
    """Spool every snapshot of six real runs (one failed, one still running) while the database
    is unreachable."""
    engine = make_engine(UNREACHABLE)
    processor = WorkflowHistorySpanProcessor(engine, spool_dir=tmp_path / "spools")
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    for n in range(5):
        try:
            with workflow_run("provision_server", tracer_provider=provider) as run:
                for name in ("select", "configure", "deploy"):
                    with run.step(name):
                        processor.force_flush(2_000)  # snapshots of the step running...
                        if n == 3 and name == "deploy":
                            raise RuntimeError("deploy failed")
                    processor.force_flush(2_000)  # ... and ended, each spooled at once
        except RuntimeError:
            pass
    with workflow_run("provision_server", tracer_provider=provider) as run:  # never ends:
        for name in ("select", "configure", "deploy"):  # only its running snapshots,
            with run.step(name):  # whose order only seq decides
                processor.force_flush(2_000)
            processor.force_flush(2_000)
        processor.shutdown(2_000)
    assert processor.spool_directory is not None
    return processor.spool_directory, spool_key(engine.url)


def _table_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        runs = connection.execute(sa.select(workflow_history).order_by("run_id")).mappings()
        steps = connection.execute(sa.select(workflow_step_history).order_by("span_id"))
        return [{k: v for k, v in r.items() if k != "id"} for r in [*runs, *steps.mappings()]]


def test_replayed_twice_or_out_of_order_leaves_the_same_rows(db_url: str, tmp_path: Path) -> None:
    """Replay in order, replay twice, apply every snapshot shuffled: identical tables."""
    source, key = _snapshots_of_real_runs(tmp_path)
    records: list[tuple[str, dict[str, Any]]] = []
    for path in spool_files(source):
        with open(path, "rb") as handle:
            header, offset = read_header(handle, str(path))
            assert header is not None
            records += [d for _, v in read_records(handle, "f", offset) if (d := header.decode(v))]
    assert len({row["run_id"] for kind, row in records if kind == "r"}) == 6
    steps = [row for kind, row in records if kind == "s"]
    assert len(steps) == 2 * len({row["span_id"] for row in steps}) == 2 * 6 * 3
    assert len(records) - len(steps) >= 6 * 6  # every run snapshotted at every step

    engine = make_engine(db_url)
    results = []
    for how in ("in order", "twice", "shuffled"):
        metadata.drop_all(engine)
        prepare_schema(engine)
        if how == "shuffled":
            for kind, row in random.Random(7).sample(records, len(records)):
                with engine.begin() as connection:
                    upsert_rows(
                        connection, [row] if kind == "r" else [], [row] if kind == "s" else []
                    )
        for copy in range(2 if how == "twice" else 1 if how == "in order" else 0):
            replayer = Replayer(Path(shutil.copytree(source, tmp_path / f"{how}{copy}")), key)
            while replayer.replay_chunk(engine):
                pass
        results.append(_table_rows(engine))
    assert results[0] == results[1] == results[2]
    statuses = sorted(r["status"] for r in results[0] if "workflow_id" in r)
    assert statuses == ["completed"] * 4 + ["failed", "running"]
    (running,) = (r for r in results[0] if r.get("status") == "running")
    assert running["steps_completed"] == 3  # its newest snapshot, whatever the order
    engine.dispose()


def test_spool_status_and_replay_commands(tmp_path: Path) -> None:
    """``spool status`` counts files, records and age; ``spool replay`` empties the spool."""
    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)
    spooled(engine, 3)
    runner = CliRunner()
    status = runner.invoke(spool_command, ["status", "--db", url, "--json"])
    assert status.exit_code == 0, status.output
    found = json.loads(status.output)
    assert (found["files"], found["records"]) == (1, 6)
    assert found["oldest_age_s"] >= 0 and "h.db" in found["database"]
    replay = runner.invoke(spool_command, ["replay", "--db", url])
    assert replay.exit_code == 0 and "Replayed 6 row(s) from 1 file(s)" in replay.output
    assert counts(engine) == (3, 3)
    status = runner.invoke(spool_command, ["status", "--db", url])
    assert "Empty" in status.output
    engine.dispose()


def test_spool_replay_command_on_an_unreachable_database_exits_3(tmp_path: Path) -> None:
    """One line naming the database (password masked), exit status 3, the spool kept."""
    engine = make_engine(UNREACHABLE)
    spooled(engine, 2)
    done = CliRunner().invoke(spool_command, ["replay", "--db", UNREACHABLE])
    assert done.exit_code == 3
    assert "cannot replay the spool" in done.output and "secret" not in done.output
    status = CliRunner().invoke(spool_command, ["status", "--db", UNREACHABLE, "--json"])
    assert json.loads(status.output)["records"] == 4


def test_a_row_the_database_refuses_is_set_aside_and_the_rest_replayed(db_url: str) -> None:
    """A NOT NULL violation costs that one row (kept in rejected.jsonl), not its chunk."""
    engine = make_engine(db_url)
    directory = spool_directory(engine.url)
    assert directory is not None
    spool = Spool(directory, spool_key(engine.url))
    poisoned = step_row(4) | {"step_name": None}
    spool.append([run_row(n) for n in range(10)], [*map(step_row, range(4)), poisoned])
    spool.append([], [step_row(n) for n in range(5, 10)])
    spool.seal()
    result = replay_spool(engine)
    assert (result.error, result.rows, result.rows_rejected) == (None, 19, 1)
    assert counts(engine) == (10, 9)
    (rejected,) = (directory / "rejected.jsonl").read_text().splitlines()
    assert json.loads(rejected)["row"]["span_id"] == poisoned["span_id"]
    assert stat.S_IMODE((directory / "rejected.jsonl").stat().st_mode) == 0o600
    engine.dispose()


def test_a_refused_live_batch_costs_only_the_refused_row(tmp_path: Path) -> None:
    """The writer spools a batch the database refuses; the replay isolates the bad row."""
    url = f"sqlite:///{tmp_path}/h.db"
    processor = WorkflowHistorySpanProcessor(make_engine(url))
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    assert processor.force_flush(10_000)  # tables created
    with processor.engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON workflow_step_history "
            "WHEN NEW.step_name = 'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    for n in range(5):
        with workflow_run("provision_server", tracer_provider=provider) as run:
            for name in ("select", "poison" if n == 2 else "deploy"):
                with run.step(name):
                    pass
    assert processor.force_flush(10_000) is False  # spooled, not committed
    deadline = time.monotonic() + 30
    while processor.stats["rows_rejected"] == 0 or spool_files(
        processor.spool_directory or tmp_path
    ):
        assert time.monotonic() < deadline, processor.stats
        time.sleep(0.05)
    assert counts(processor.engine) == (5, 9)
    assert processor.stats["rows_rejected"] == 1
    processor.shutdown(5_000)


def test_a_damaged_header_resynchronises_on_the_next_frame(tmp_path: Path) -> None:
    """A flipped byte in the header loses the header only: every row is replayed, the skipped
    record and bytes are counted (also by ``spool replay --json``) and kept in ``*.damaged``."""
    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)
    path = spooled(engine, 10)
    data = bytearray(path.read_bytes())
    header_length = data.index(b"\n") + 1
    data[data.index(b"flowtel_spool")] ^= 0x01
    path.write_bytes(bytes(data))
    result = CliRunner().invoke(spool_command, ["replay", "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert (found["error"], found["rows"], found["remaining_files"]) == (None, 20, 0)
    assert (found["records_skipped"], found["bytes_skipped"]) == (1, header_length)
    assert counts(engine) == (10, 10)
    (damaged,) = found["damaged"]
    assert Path(damaged).read_bytes() == bytes(data[:header_length])
    assert stat.S_IMODE(Path(damaged).stat().st_mode) == 0o600
    path.write_bytes(bytes(data))  # once more, as text
    text = CliRunner().invoke(spool_command, ["replay", "--db", url]).output
    assert "Skipped 1 damaged record(s)" in text and damaged in text
    engine.dispose()


def test_a_lost_newline_costs_one_record_not_two(tmp_path: Path) -> None:
    """Two records run together: the damaged first is skipped, the second found inside it."""
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    path = spooled(engine, 10)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[4] = lines[4][:-1]  # run-001's step record loses its newline: it merges with run-002
    path.write_bytes(b"".join(lines))
    result = replay_spool(engine)
    assert (result.error, result.rows, result.records_skipped) == (None, 19, 1)
    assert result.bytes_skipped == len(lines[4])
    assert counts(engine) == (10, 9)
    engine.dispose()


def test_damaged_and_torn_records_are_counted(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/h.db")
    path = spooled(engine, 10)
    data = bytearray(path.read_bytes())
    data[data.index(b'"run-004"') + 2] ^= 0x01
    path.write_bytes(bytes(data[:-10]))  # and the last record torn
    result = replay_spool(engine)
    assert (result.rows, result.records_skipped) == (18, 2)
    assert counts(engine) == (9, 9)
    engine.dispose()


def test_the_writer_counts_damaged_records_it_skips(tmp_path: Path) -> None:
    """The writer's own start-up replay counts skipped records and bytes in its stats."""
    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)
    path = spooled(engine, 10)
    data = bytearray(path.read_bytes())
    header_length = data.index(b"\n") + 1
    data[data.index(b"flowtel_spool")] ^= 0x01
    path.write_bytes(bytes(data))
    processor = WorkflowHistorySpanProcessor(make_engine(url))
    deadline = time.monotonic() + 30
    while processor.stats["rows_replayed"] < 20:
        assert time.monotonic() < deadline, processor.stats
        time.sleep(0.05)
    stats = processor.stats
    assert (stats["spool_records_skipped"], stats["spool_bytes_skipped"]) == (1, header_length)
    assert counts(engine) == (10, 10)
    processor.shutdown(5_000)
    processor.engine.dispose()
    engine.dispose()
