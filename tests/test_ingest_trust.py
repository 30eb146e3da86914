"""``flowtel ingest`` trusts no sender: nothing acknowledged that was dropped, run identity
validated and owned, bad input refused, a dead writer reported.

Each test runs the receiver in this process on a free loopback port over real databases
(SQLite, PostgreSQL, MariaDB where a database matters) and speaks HTTP to it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exporters.ingest.server import IngestServer
from exporters.ingest.sink import IngestSink
from tests.test_ingest import kv, otlp_json, post, rows

T0 = 1_700_000_000_000_000_000
TRACE_A, TRACE_B = "aa" * 16, "bb" * 16


@pytest.fixture
def ingest(db_url: str, tmp_path: Path) -> Iterator[IngestServer]:
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "ingest-spool"})
    server = IngestServer(sink, "127.0.0.1:0").start()
    yield server
    server.shutdown()
    sink.close()


def run_span(
    run_id: str,
    *,
    trace: str = TRACE_A,
    span: str | None = None,
    status: str | None = "completed",
    **extra: Any,
) -> dict[str, Any]:
    attributes = {"workflow__run_id": run_id, "workflow__name": "payroll", **extra}
    if status is not None:
        attributes["workflow__status"] = status
    return {
        "traceId": trace,
        "spanId": span or os.urandom(8).hex(),
        "name": "payroll",
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + 10**9),
        "attributes": kv(**attributes),
    }


def step_span(
    run_id: str, index: int, *, trace: str = TRACE_A, status: str = "completed"
) -> dict[str, Any]:
    return {
        "traceId": trace,
        "spanId": os.urandom(8).hex(),
        "name": f"s{index}",
        "startTimeUnixNano": str(T0 + index),
        "endTimeUnixNano": str(T0 + index + 1000),
        "attributes": kv(
            workflow__run_id=run_id,
            workflow__step__name=f"s{index}",
            workflow__step__index=index,
            workflow__step__status=status,
        ),
    }


def stored(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows, or none when nothing ever created the tables."""
    engine = sa.create_engine(url)
    try:
        exists = sa.inspect(engine).has_table("workflow_history")
    finally:
        engine.dispose()
    return rows(url) if exists else ([], [])


def stats(server: IngestServer) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/stats", timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def health(server: IngestServer) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{server.url}/health", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# -- item 6: nothing acknowledged that was dropped ------------------------------------------


def test_every_request_answered_200_had_all_its_steps_committed_the_others_429(
    db_url: str, tmp_path: Path
) -> None:
    """Seven concurrent requests of 600 spans each against a 1,000-event queue: each is either
    answered 200 with every one of its steps in the table, or 429 with Retry-After; none is
    acknowledged while losing spans, and the writer dropped nothing."""
    sink = IngestSink(db_url, max_queued=500, processor_options={"spool_dir": tmp_path / "spool"})
    server = IngestServer(sink, "127.0.0.1:0", retry_after=3).start()
    answers: dict[str, tuple[int, dict[str, str]]] = {}

    def send(n: int) -> None:
        run_id = f"run-{n}"
        trace = f"{n:032x}"
        spans = [run_span(run_id, trace=trace)]
        spans += [step_span(run_id, i, trace=trace) for i in range(1, 600)]
        status, headers, _ = post(server.url, otlp_json("svc", spans))
        answers[run_id] = (status, headers)

    try:
        threads = [threading.Thread(target=send, args=(n,)) for n in range(7)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        writer_stats = sink.processor("svc").stats
    finally:
        server.shutdown()
        sink.close()
    _, step_rows = rows(db_url)
    steps_per_run: dict[str, int] = {}
    for step in step_rows:
        steps_per_run[step["run_id"]] = steps_per_run.get(step["run_id"], 0) + 1
    committed = [run for run, (status, _) in answers.items() if status == 200]
    refused = [run for run, (status, _) in answers.items() if status == 429]
    assert len(answers) == 7 and sorted(committed + refused) == sorted(answers)
    assert committed, answers
    assert {run: steps_per_run.get(run) for run in committed} == {run: 599 for run in committed}
    assert all(answers[run][1].get("Retry-After") == "3" for run in refused)
    assert writer_stats["events_dropped"] == 0
    assert sink.stats.busy_requests == len(refused)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_request_larger_than_the_queue_can_ever_take_is_answered_413_and_writes_nothing(
    db_url: str, tmp_path: Path
) -> None:
    sink = IngestSink(db_url, max_queued=500, processor_options={"spool_dir": tmp_path / "sp"})
    server = IngestServer(sink, "127.0.0.1:0").start()
    try:
        spans = [run_span("big")] + [step_span("big", i) for i in range(1, 3000)]
        status, _, body = post(server.url, otlp_json("svc", spans))
        events_dropped = sink.processor("svc").stats["events_dropped"]
    finally:
        server.shutdown()
        sink.close()
    assert status == 413 and b"1000" in body
    assert stored(db_url) == ([], [])
    assert events_dropped == 0 and sink.stats.too_large_requests == 1


# -- item 7: run identity ---------------------------------------------------------------------


def test_a_span_of_another_service_or_trace_never_rewrites_a_run(
    ingest: IngestServer, db_url: str, tmp_path: Path
) -> None:
    """run-42 belongs to (billing, trace A): a span from other-team, or from billing under
    trace B, is a conflict — answered with a partial success, counted, not applied — and so
    is it after a restart of ingest (the owner is read from the table)."""
    assert post(ingest.url, otlp_json("billing", [run_span("run-42")]))[0] == 200
    status, _, body = post(
        ingest.url, otlp_json("other-team", [run_span("run-42", trace=TRACE_B, status="failed")])
    )
    assert status == 200 and json.loads(body)["partialSuccess"]["rejectedSpans"] == "1"
    foreign_step = step_span("run-42", 1, trace=TRACE_B, status="failed")
    assert post(ingest.url, otlp_json("billing", [foreign_step]))[0] == 200
    assert stats(ingest)["run_conflicts"] == 2
    restarted = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "restarted"})
    server = IngestServer(restarted, "127.0.0.1:0").start()
    try:
        late = run_span("run-42", trace=TRACE_B, status="failed")
        assert post(server.url, otlp_json("other-team", [late]))[0] == 200
        assert restarted.stats.run_conflicts == 1
    finally:
        server.shutdown()
        restarted.close()
    (run,), steps = rows(db_url)
    assert (run["run_id"], run["service_name"], run["status"], run["trace_id"]) == (
        "run-42",
        "billing",
        "completed",
        TRACE_A,
    )
    assert steps == []


@pytest.mark.parametrize("db_url", ["mysql"], indirect=True)
def test_on_mariadb_a_run_id_differing_only_in_case_names_the_same_owned_run(
    ingest: IngestServer, db_url: str
) -> None:
    """MariaDB's collation makes RUN-42 and run-42 one row: its owner is kept all the same."""
    assert post(ingest.url, otlp_json("billing", [run_span("run-42")]))[0] == 200
    foreign = run_span("RUN-42", trace=TRACE_B, status="failed")
    assert post(ingest.url, otlp_json("other-team", [foreign]))[0] == 200
    (run,), _ = rows(db_url)
    assert (run["service_name"], run["status"], run["trace_id"]) == (
        "billing",
        "completed",
        TRACE_A,
    )
    assert ingest.sink.stats.run_conflicts == 1


def test_the_owner_keeps_writing_its_own_run(ingest: IngestServer, db_url: str) -> None:
    """Ownership never blocks the run's own later spans (steps, then its end)."""
    assert post(ingest.url, otlp_json("billing", [step_span("run-7", 1)]))[0] == 200
    assert post(ingest.url, otlp_json("billing", [run_span("run-7", status="failed")]))[0] == 200
    (run,), (step,) = rows(db_url)
    assert (run["status"], step["status"]) == ("failed", "completed")
    assert ingest.sink.stats.run_conflicts == 0


@pytest.mark.parametrize(
    "run_id",
    ["order-" + "0" * 66, "bad\nid", "legacy-42", " "],
    ids=["72-characters", "newline", "reserved-prefix", "blank"],
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_run_ids_the_api_would_refuse_are_answered_400_naming_the_attribute(
    ingest: IngestServer, db_url: str, run_id: str
) -> None:
    status, _, body = post(ingest.url, otlp_json("svc", [run_span(run_id)]))
    assert status == 400 and b"workflow.run_id" in body
    assert stored(db_url) == ([], [])


# -- item 8: input ingest refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("span", "attribute"),
    [
        (run_span("r-1", status="exploded"), b"workflow.status"),
        (run_span("r-1", status=""), b"workflow.status"),
        (step_span("r-1", 1, status="exploded"), b"workflow.step.status"),
    ],
    ids=["run-exploded", "run-empty", "step-exploded"],
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unknown_status_words_are_answered_400_naming_the_attribute(
    ingest: IngestServer, db_url: str, span: dict[str, Any], attribute: bytes
) -> None:
    good = run_span("r-good", trace=TRACE_B)
    status, _, body = post(ingest.url, otlp_json("svc", [good, span]))
    assert status == 400 and attribute in body
    assert stored(db_url) == ([], [])  # the whole request is refused: its good span too


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_json_nested_1000_deep_is_answered_400_and_the_next_request_commits(
    ingest: IngestServer, db_url: str
) -> None:
    deep = b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, _, body = post(ingest.url, deep)
    assert status == 400 and b"nested" in body
    assert post(ingest.url, otlp_json("svc", [run_span("after")]))[0] == 200
    (run,), _ = rows(db_url)
    assert run["run_id"] == "after"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_48_clients_connecting_while_ingest_is_busy_are_each_answered_200_or_429(
    db_url: str, tmp_path: Path
) -> None:
    """48 clients connect at once while the accept loop is not running yet (as when it is
    busy): the listen backlog holds them all (a backlog of 5 left 42 unconnected within their
    2 s connect timeout), then each gets 200 or 429 (8 handlers at most), none a reset."""
    sink = IngestSink(db_url, processor_options={"spool_dir": tmp_path / "spool"})
    server = IngestServer(sink, "127.0.0.1:0", max_in_flight=8)  # listening, not accepting
    host, port = server.address
    body = otlp_json("svc", [run_span("crowd")])
    request = (
        f"POST /v1/traces HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    barrier = threading.Barrier(48, timeout=30)
    attempted = threading.Semaphore(0)
    answers: list[str] = []

    def client() -> None:
        try:
            barrier.wait()
            try:
                sock = socket.create_connection((host, port), timeout=2)
            finally:
                attempted.release()
            with sock:
                sock.settimeout(60)
                sock.sendall(request)
                answers.append(sock.recv(64).split(b" ", 2)[1].decode())
        except (OSError, IndexError, threading.BrokenBarrierError) as exc:
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(48)]
    try:
        for thread in threads:
            thread.start()
        for _ in threads:
            attempted.acquire(timeout=30)
        server.start()
        for thread in threads:
            thread.join(60)
    finally:
        server.shutdown()
        sink.close()
    assert len(answers) == 48 and set(answers) <= {"200", "429"}, answers
    assert "200" in answers


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_hung_database_is_answered_503_within_the_commit_timeout_and_the_resend_commits(
    db_url: str, tmp_path: Path
) -> None:
    """Reading a run's owner waits no longer than the request's commit timeout: with the table
    locked (a hung database: statements wait, nothing fails) a new run is answered 503 with
    Retry-After instead of holding the request for the 60 s statement timeout."""
    sink = IngestSink(db_url, commit_timeout=2, processor_options={"spool_dir": tmp_path / "s"})
    server = IngestServer(sink, "127.0.0.1:0").start()
    locker = sa.create_engine(db_url)
    try:
        assert post(server.url, otlp_json("svc", [run_span("before")]))[0] == 200
        body = otlp_json("svc", [run_span("during", trace=TRACE_B)])
        with locker.connect() as connection:
            connection.execute(sa.text("LOCK TABLE workflow_history IN ACCESS EXCLUSIVE MODE"))
            status, headers, _ = post(server.url, body)
            connection.rollback()
        assert status == 503 and headers["Retry-After"] == "2"
        assert post(server.url, body)[0] == 200
    finally:
        locker.dispose()
        server.shutdown()
        sink.close()
    assert [run["run_id"] for run in rows(db_url)[0]] == ["before", "during"]


# -- item 1 (ingest's part): a dead writer is reported -----------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_health_answers_503_naming_the_service_whose_writer_thread_died(
    ingest: IngestServer, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert post(ingest.url, otlp_json("billing", [run_span("r1")]))[0] == 200
    assert health(ingest) == (200, "ok")
    writer = ingest.sink.processor("billing").writer

    def die() -> None:
        raise SystemExit("the test stops the writer's thread")

    monkeypatch.setattr(writer, "collect", die)
    writer._wake.set()
    writer._thread.join(10)  # type: ignore[union-attr]
    assert not writer.alive
    status, text = health(ingest)
    assert status == 503 and "billing" in text and "writer" in text
    status, _, _ = post(ingest.url, otlp_json("billing", [run_span("r2", trace=TRACE_B)]))
    assert status == 503


# -- issue 21 item 3: context_json and context.<key> together -----------------------------------


def test_context_json_and_per_key_context_attributes_are_merged_per_key_winning(
    ingest: IngestServer, db_url: str
) -> None:
    span = run_span(
        "ctx-1",
        workflow__context_json=json.dumps({"site": "par1", "server_id": "old", "rack": {"u": 4}}),
        workflow__context__server_id="srv-9",
        workflow__context__device_type="r640",
    )
    assert post(ingest.url, otlp_json("svc", [span]))[0] == 200
    (run,), _ = rows(db_url)
    assert (run["server_id"], run["device_type"]) == ("srv-9", "r640")
    assert run["metadata"]["context_data"] == {
        "site": "par1",
        "server_id": "srv-9",
        "rack": {"u": 4},
        "device_type": "r640",
    }


# -- issue 22 item 6: spans that follow OpenTelemetry's CI/CD conventions ----------------------


def pipeline_span(trace: str, span: str, result: str | None, **extra: Any) -> dict[str, Any]:
    attributes = {
        "cicd__pipeline__name": "Build and Test",
        "cicd__pipeline__run__id": "120912",
        "cicd__pipeline__action__name": "RUN",
        "cicd__pipeline__run__url__full": "https://ci.example/runs/120912",
        **extra,
    }
    if result is not None:
        attributes["cicd__pipeline__result"] = result
    return {
        "traceId": trace,
        "spanId": span,
        "name": "RUN Build and Test",
        "kind": 2,  # SERVER, as the conventions ask of a pipeline run
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + 60 * 10**9),
        "attributes": kv(**attributes),
    }


def task_span(trace: str, parent: str, name: str, start_s: int, result: str) -> dict[str, Any]:
    return {
        "traceId": trace,
        "spanId": os.urandom(8).hex(),
        "parentSpanId": parent,
        "name": name,
        "kind": 1,  # INTERNAL
        "startTimeUnixNano": str(T0 + start_s * 10**9),
        "endTimeUnixNano": str(T0 + (start_s + 5) * 10**9),
        "attributes": kv(
            cicd__pipeline__task__name=name,
            cicd__pipeline__task__run__id=f"2692{start_s}",
            cicd__pipeline__task__run__result=result,
            cicd__pipeline__task__type="build",
        ),
    }


def test_a_cicd_pipeline_run_and_its_task_runs_become_a_run_and_its_steps(
    ingest: IngestServer, db_url: str
) -> None:
    trace, root = os.urandom(16).hex(), os.urandom(8).hex()
    spans = [
        task_span(trace, root, "go-test", 20, "failure"),  # sent out of order
        task_span(trace, root, "lint", 1, "success"),
        task_span(trace, root, "deploy", 40, "skip"),
        pipeline_span(trace, root, "failure"),
    ]
    assert post(ingest.url, otlp_json("github", spans))[0] == 200
    (run,), steps = rows(db_url)
    assert (run["run_id"], run["workflow_name"], run["workflow_id"]) == (
        f"cicd-{trace}",
        "Build and Test",
        "Build and Test",
    )
    assert (run["status"], run["error_type"], run["duration_ms"]) == ("failed", "failure", 60_000)
    assert run["metadata"]["context_data"]["cicd.pipeline.run.id"] == "120912"
    assert run["current_step"] == "go-test" and run["steps_completed"] == 2  # lint, deploy
    by_index = {s["step_index"]: (s["step_name"], s["status"]) for s in steps}
    assert by_index == {
        1: ("lint", "completed"),
        2: ("go-test", "failed"),
        3: ("deploy", "skipped"),
    }


@pytest.mark.parametrize(
    ("result", "run_status", "step_status"),
    [
        ("success", "completed", "completed"),
        ("failure", "failed", "failed"),
        ("error", "failed", "failed"),
        ("timeout", "failed", "failed"),
        ("cancellation", "cancelled", "failed"),
        ("skip", "cancelled", "skipped"),
    ],
)
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_each_cicd_result_word_maps_to_the_documented_status(
    ingest: IngestServer, db_url: str, result: str, run_status: str, step_status: str
) -> None:
    trace, root = os.urandom(16).hex(), os.urandom(8).hex()
    spans = [pipeline_span(trace, root, result), task_span(trace, root, "only", 1, result)]
    assert post(ingest.url, otlp_json("ci", spans))[0] == 200
    (run,), (step,) = rows(db_url)
    assert (run["status"], step["status"]) == (run_status, step_status)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unknown_cicd_result_is_answered_400_naming_the_attribute(
    ingest: IngestServer, db_url: str
) -> None:
    trace, root = os.urandom(16).hex(), os.urandom(8).hex()
    status, _, body = post(ingest.url, otlp_json("ci", [pipeline_span(trace, root, "exploded")]))
    assert status == 400 and b"cicd.pipeline.result" in body and b"success" in body
    assert stored(db_url) == ([], [])
