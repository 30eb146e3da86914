"""Tests for ``flowtel serve`` (exporters.serve): every endpoint on SQLite, PostgreSQL and
MariaDB, the token, the security headers, escaping of hostile values, bad parameters, unknown
runs, a database that is down, read-only access and the live stream."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html.parser
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event
from sqlalchemy import insert, update
from sqlalchemy.engine import Engine

from exporters.db.engine import make_engine
from exporters.db.schema import create_schema, workflow_history
from exporters.query.store import HistoryStore
from exporters.serve.app import create_app
from tests.pg_private import PrivatePostgres
from tests.serve_support import (
    FAILED,
    HOSTILE,
    IMG,
    LONG_ERROR_TYPE,
    PAYLOADS,
    RUNNING,
    SCRIPT,
    STACK,
    T0,
    UNDATED,
    run_row,
    seed_history,
    seed_wide_run,
    serving,
)
from tests.spawn import spawn

LEGACY_KEYS = [
    "id", "workflow_id", "server_id", "device_type", "status", "started_at", "completed_at",
    "steps_completed", "total_steps", "error_message", "metadata",
]  # fmt: skip


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A writable engine on a fresh history database (the test's writer)."""
    engine = make_engine(db_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def run_ids(engine: Engine) -> list[str]:
    """The seeded runs, newest first."""
    return seed_history(engine)


@pytest.fixture
def client(db_url: str, run_ids: list[str]) -> Iterator[TestClient]:
    """The application on the seeded database, opened read-only."""
    app = create_app(db_url)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.flowtel.engine.dispose()


def error_body(response: httpx.Response, status: int) -> dict[str, Any]:
    """The JSON error body of *response*, after checking its status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] and body["message"]
    assert "Traceback" not in response.text
    return body


# --- the API -----------------------------------------------------------------------------------


def test_api_runs_lists_newest_first(client: TestClient, run_ids: list[str]) -> None:
    """/api/runs lists every run newest first, undated runs last."""
    body = client.get("/api/runs", params={"limit": 100}).json()
    assert [r["run_id"] for r in body["runs"]] == run_ids
    assert body["next_cursor"] is None


def test_api_runs_takes_the_filters_of_flowtel_runs(client: TestClient) -> None:
    """status, workflow, workflow_id, server_id, device_type, since and until all filter."""

    def ids(**params: Any) -> set[str]:
        return {r["run_id"] for r in client.get("/api/runs", params=params).json()["runs"]}

    assert ids(status="failed") == {FAILED, HOSTILE}
    assert ids(workflow=f"wf{SCRIPT}") == {HOSTILE}
    assert ids(workflow_id=f"id{IMG}") == {HOSTILE}
    assert ids(server_id=IMG) == {HOSTILE}
    assert ids(status="running", device_type="s2_c2_small") == {RUNNING}
    since = (T0 + dt.timedelta(seconds=30)).isoformat()
    assert ids(since=since) == {FAILED, RUNNING, HOSTILE}
    assert ids(until=since, status="failed") == set()
    assert ids(since="1d", status="pending") == set()  # the undated run has no start


def test_api_runs_cursor_pages_cover_every_run_once(client: TestClient, run_ids: list[str]) -> None:
    """Following next_cursor with limit=2 visits every run exactly once, in order."""
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        body = client.get("/api/runs", params=params).json()
        seen += [r["run_id"] for r in body["runs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == run_ids


def test_api_run_has_the_facts_of_flowtel_show_json(client: TestClient, engine: Engine) -> None:
    """/api/runs/{run} answers what `flowtel show --json` prints, by id, prefix or workflow id."""
    expected = HistoryStore(engine).get_run(FAILED).to_json()
    assert client.get(f"/api/runs/{FAILED}").json() == expected
    assert client.get(f"/api/runs/{FAILED[:10]}").json()["run_id"] == FAILED
    workflow_id = expected["workflow_id"]
    assert client.get(f"/api/runs/{workflow_id}").json()["run_id"] == FAILED
    assert expected["failed_step"]["error_stacktrace"] == STACK
    assert "hunter2" not in json.dumps(expected)  # redacted on the way out


def test_api_unknown_run_is_404_json(client: TestClient) -> None:
    """An unknown run answers 404 with a JSON body; an ambiguous prefix 409 with candidates."""
    body = error_body(client.get("/api/runs/no-such-run"), 404)
    assert body["error"] == "run_not_found"
    assert "no-such-run" in body["message"]
    assert set(error_body(client.get("/api/runs/c000"), 409)["candidates"]) >= {
        "c0000000-0000-4000-8000-00000000c000"
    }
    assert error_body(client.get("/api/events", params={"run": "nope"}), 404)


def test_api_stats_has_the_facts_of_flowtel_stats_json(client: TestClient, engine: Engine) -> None:
    """/api/stats answers what `flowtel stats --json` prints over the same window."""
    since, until = T0 - dt.timedelta(days=1), T0 + dt.timedelta(hours=1)
    expected = HistoryStore(engine).stats(since=since, until=until, by="device_type").to_json()
    params = {"since": since.isoformat(), "until": until.isoformat(), "by": "device_type"}
    assert client.get("/api/stats", params=params).json() == expected


def test_api_health(client: TestClient) -> None:
    """/api/health says the database answers and names its schema revision (masked URL)."""
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["reachable"] is True
    assert "schema_revision" in body
    assert "mode=ro" not in body["database"]


def test_api_workflow_history_has_the_old_table_shape(
    client: TestClient, run_ids: list[str]
) -> None:
    """/api/workflow_history rows have exactly the old table's columns, highest id first."""
    rows = client.get("/api/workflow_history", params={"limit": 100}).json()
    assert len(rows) == len(run_ids)
    assert all(list(row) == LEGACY_KEYS for row in rows)
    assert [row["id"] for row in rows] == sorted((row["id"] for row in rows), reverse=True)
    failed = client.get("/api/workflow_history", params={"status": "failed"}).json()
    assert {row["workflow_id"] for row in failed} == {f"id{IMG}", f"provision_{FAILED[:8]}"}
    assert "hunter2" not in json.dumps(failed)
    page = client.get("/api/workflow_history", params={"before_id": rows[0]["id"], "limit": 1})
    assert [row["id"] for row in page.json()] == [rows[1]["id"]]


def test_openapi_describes_the_api(client: TestClient) -> None:
    """/openapi.json lists every API path; no page loads anything from the internet."""
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/api/runs", "/api/runs/{run}", "/api/stats", "/api/health", "/api/events",
        "/api/workflow_history", "/api/runs/{a}/diff/{b}", "/api/runs/{run}/diff",
    }  # fmt: skip
    assert client.get("/docs").status_code == 404  # Swagger UI would fetch from a CDN


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/runs?status=bogus", 400),
        ("/api/runs?limit=0", 422),
        ("/api/runs?limit=abc", 422),
        ("/api/runs?limit=100000", 422),
        ("/api/runs?since=yesterday-ish", 400),
        ("/api/runs?cursor=not-a-cursor", 400),
        ("/api/stats?by=a;drop", 400),
        ("/api/stats?top=-1", 422),
        ("/api/stats?since=nope", 400),
        ("/api/workflow_history?before_id=x", 422),
    ],
)
def test_bad_parameters_are_4xx_json(client: TestClient, path: str, status: int) -> None:
    """A bad query parameter answers 400/422 with a JSON body naming it, never a 500."""
    assert error_body(client.get(path), status)["error"] == "bad_parameter"


def test_bad_parameter_on_a_page_is_a_page(client: TestClient) -> None:
    """A page with a bad parameter says so as a page with status 400."""
    response = client.get("/", params={"since": "nope"})
    assert response.status_code == 400
    assert "is not a time" in response.text and "Traceback" not in response.text


# --- the pages ---------------------------------------------------------------------------------


class Markup(html.parser.HTMLParser):
    """Collects what matters for script injection: tags, their attributes, and text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Markup:
    markup = Markup()
    markup.feed(page)
    return markup


def assert_inert(page: str) -> Markup:
    """No inline script, no event handler, no style attribute, no injected element."""
    markup = parse(page)
    scripts = [attrs for tag, attrs in markup.tags if tag == "script"]
    assert scripts == [{"src": "/static/flowtel.js", "defer": None}]
    for tag, attrs in markup.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "style" not in attrs, (tag, attrs)
        assert tag != "img", attrs
        assert not str(attrs.get("href", "")).startswith("javascript:"), attrs
    return markup


def test_pages_render_runs_and_failures(client: TestClient) -> None:
    """The list shows runs with status colours; a failed run shows error, stack and logs."""
    listing = client.get("/")
    assert listing.status_code == 200
    rows = [a for tag, a in parse(listing.text).tags if tag == "tr" and "data-run-id" in a]
    assert {a["data-run-id"] for a in rows} >= {FAILED, RUNNING, HOSTILE}
    assert any("status-failed" in str(a["class"]) for a in rows)
    page = client.get(f"/runs/{FAILED}")
    assert page.status_code == 200
    text = " ".join(parse(page.text).text)
    for fact in ("srv-0001 stuck in Commissioning", "TimeoutError: stuck", "still commissioning",
                 "10.0.0.1", "↻2", "skipped"):  # fmt: skip
        assert fact in text, fact
    assert "hunter2" not in page.text
    assert 'href="http://127.0.0.1:9411/zipkin/traces/abc"' in page.text
    stats = client.get("/stats", params={"since": "30d"})
    assert stats.status_code == 200 and "<svg" in stats.text
    assert "provision_server" in stats.text


def test_runs_list_identifiers_may_wrap_after_underscores_and_read_whole(
    client: TestClient,
) -> None:
    """Identifiers carry a <wbr> after each underscore (a wrap opportunity, no character)."""
    listing = client.get("/")
    assert "provision_<wbr>server" in listing.text
    assert "provision_server" in "".join(parse(listing.text).text)


@pytest.mark.parametrize(
    "path",
    ["/", "/?status=failed", f"/runs/{HOSTILE}", f"/partials/runs/{HOSTILE}", "/partials/runs",
     "/stats?since=30d"],
)  # fmt: skip
def test_hostile_values_render_as_text(client: TestClient, path: str) -> None:
    """<script> and "><img onerror> in names, errors, logs and context show as text."""
    response = client.get(path)
    assert response.status_code == 200
    for payload in PAYLOADS:
        assert payload not in response.text
    if "runs/" in path:
        markup = parse(response.text)
        text = "".join(markup.text)
        assert SCRIPT in text and IMG in text  # shown, as text
        assert f"log {SCRIPT}" in text and f"stack {IMG}" in text
    if not path.startswith("/partials"):
        assert_inert(response.text)
    else:
        assert not [t for t, a in parse(response.text).tags if t in ("script", "img")]


def test_javascript_trace_link_is_not_a_link(client: TestClient) -> None:
    """A stored trace URL with the javascript: scheme is shown as text, never as a link."""
    page = client.get(f"/runs/{HOSTILE}").text
    assert "javascript:alert(1)" in page
    assert not any(str(a.get("href", "")).startswith("javascript") for _, a in parse(page).tags)


@pytest.mark.parametrize(
    "path", ["/", "/stats", f"/runs/{FAILED}", "/api/runs", "/static/flowtel.css", "/nope"]
)
def test_every_response_has_a_strict_csp(client: TestClient, path: str) -> None:
    """Pages, API, static files and errors carry a CSP without 'unsafe-inline' or wildcards."""
    headers = client.get(path).headers
    policy = headers["content-security-policy"]
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy and "*" not in policy
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert headers["x-content-type-options"] == "nosniff"


def test_unknown_run_page_is_404(client: TestClient) -> None:
    """An unknown run's page is a 404 page that suggests nothing misleading."""
    response = client.get("/runs/no-such-run")
    assert response.status_code == 404
    assert "No such run" in response.text and "Traceback" not in response.text


# --- read-only ---------------------------------------------------------------------------------


def test_database_is_opened_read_only(client: TestClient) -> None:
    """The server's engine cannot write, whatever the backend."""
    engine = client.app.state.flowtel.engine  # type: ignore[attr-defined]
    with pytest.raises(Exception) as caught, engine.begin() as conn:
        conn.execute(insert(workflow_history).values(run_row("written-by-serve")))
    assert "read" in str(caught.value).lower()


# --- the token ---------------------------------------------------------------------------------


@pytest.fixture
def guarded(db_url: str, run_ids: list[str]) -> Iterator[TestClient]:
    """The application with a token."""
    app = create_app(db_url, token="s3cret-token")
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
    app.state.flowtel.engine.dispose()


@pytest.mark.parametrize(
    "path", ["/", "/stats", f"/runs/{FAILED}", "/api/health", "/api/runs", "/api/events",
             "/openapi.json", "/static/flowtel.js", "/no-such-path"],
)  # fmt: skip
def test_token_is_needed_on_every_path(guarded: TestClient, path: str) -> None:
    """Without the token, or with a wrong one, every path answers 401 (JSON, with a CSP)."""
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        response = guarded.get(path, headers=headers)
        assert error_body(response, 401)["error"] == "unauthorized"
        assert "Bearer" in response.headers["www-authenticate"]
        assert "content-security-policy" in response.headers


def test_token_opens_every_path(guarded: TestClient) -> None:
    """The right Bearer token (or a browser's Basic login with it as password) gets through."""
    bearer = {"Authorization": "Bearer s3cret-token"}
    for path in ("/", "/api/health", f"/api/runs/{FAILED}", "/static/flowtel.css"):
        assert guarded.get(path, headers=bearer).status_code == 200, path
    basic = base64.b64encode(b"anyone:s3cret-token").decode()
    assert guarded.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert guarded.get("/", headers={"Authorization": "bearer s3cret-token"}).status_code == 200


def test_no_token_on_loopback_needs_no_auth(client: TestClient) -> None:
    """Without a token configured, /api/health and the pages answer without auth."""
    assert client.get("/api/health").status_code == 200
    assert client.get("/").status_code == 200


def test_serve_refuses_a_public_bind_without_a_token(tmp_path: Any) -> None:
    """`flowtel serve --host 0.0.0.0` without a token exits 2 and says a token is needed."""
    result = subprocess.run(
        [sys.executable, "-m", "exporters.cli", "serve", "--host", "0.0.0.0",
         "--db", f"sqlite:///{tmp_path}/h.db"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                        "PYTHONPATH": sys.path[0]},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "token is needed" in result.stderr and "FLOWTEL_SERVE_TOKEN" in result.stderr


def test_serve_freezes_its_start_up_objects_before_serving(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By the time uvicorn starts, what start-up built is frozen out of the cyclic garbage
    collector's sight (``gc.get_freeze_count()`` above zero); nothing was frozen before."""
    import gc

    import uvicorn
    from click.testing import CliRunner

    from exporters.cli import main

    url = f"sqlite:///{tmp_path}/h.db"
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    frozen_at_run: list[int] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: frozen_at_run.append(gc.get_freeze_count()))
    gc.unfreeze()
    try:
        assert gc.get_freeze_count() == 0
        result = CliRunner().invoke(main, ["serve", "--db", url])
    finally:
        gc.unfreeze()
    assert result.exit_code == 0, result.output
    assert len(frozen_at_run) == 1 and frozen_at_run[0] > 1000


def test_serve_exits_3_when_the_database_cannot_be_opened(tmp_path: Any) -> None:
    """A SQLite file that does not exist is not created: exit status 3, one line."""
    result = subprocess.run(
        [sys.executable, "-m", "exporters.cli", "serve", "--db", f"sqlite:///{tmp_path}/no.db"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "cannot use the history database" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "no.db").exists()


# --- the database down -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["postgresql+psycopg://flowtel:pw@127.0.0.1:1/flowtel?connect_timeout=2",
     "mysql+pymysql://flowtel:pw@127.0.0.1:1/flowtel?connect_timeout=2",
     "sqlite:////nonexistent-dir/history.db"],
)  # fmt: skip
def test_database_down_is_503(url: str) -> None:
    """The API answers 503 JSON; a page says the database is unavailable and retries."""
    with TestClient(create_app(url), raise_server_exceptions=False) as down:
        for path in ("/api/runs", f"/api/runs/{FAILED}", "/api/stats", "/api/workflow_history"):
            body = error_body(down.get(path), 503)
            assert body["error"] == "database_unavailable"
            assert ":pw@" not in body["message"]
        health = down.get("/api/health")
        assert health.status_code == 503 and health.json()["reachable"] is False
        page = down.get("/")
        assert page.status_code == 503
        assert "unavailable" in page.text and '<meta http-equiv="refresh" content="5">' in page.text
        assert page.headers["retry-after"] == "5"


# --- the live stream ---------------------------------------------------------------------------


def read_events(lines: Iterator[str], until: Any, limit: float = 20.0) -> list[dict[str, Any]]:
    """Parse SSE events from the stream's *lines* until ``until(events)`` is true."""
    events: list[dict[str, Any]] = []
    event: dict[str, Any] = {}
    deadline = dt.datetime.now() + dt.timedelta(seconds=limit)
    for line in lines:
        if line.startswith("event:"):
            event["event"] = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            event["data"] = json.loads(line.split(":", 1)[1])
        elif not line and event:
            events.append(event)
            event = {}
            if until(events):
                return events
        assert dt.datetime.now() < deadline, events
    return events


def test_events_stream_changes_of_runs_in_progress(
    db_url: str, engine: Engine, run_ids: list[str]
) -> None:
    """/api/events sends the runs in progress, then every change and every new run."""
    app = create_app(db_url, poll_interval=0.1)
    try:
        with serving(app) as base, httpx.stream("GET", f"{base}/api/events", timeout=30) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.iter_lines()
            initial = read_events(lines, lambda e: e[-1]["event"] == "ready")
            assert {e["data"]["run_id"] for e in initial if e["event"] == "run"} == {RUNNING}
            with engine.begin() as conn:
                conn.execute(
                    update(workflow_history)
                    .where(workflow_history.c.run_id == RUNNING)
                    .values(steps_completed=2, current_step="deploy")
                )
            moved = read_events(lines, lambda e: any(x["event"] == "run" for x in e))
            assert moved[-1]["data"]["current_step"] == "deploy"
            with engine.begin() as conn:
                conn.execute(
                    insert(workflow_history).values(
                        run_row("b0000000-new", started_at=dt.datetime.now(dt.UTC))
                    )
                )
            new = read_events(lines, lambda e: any(x["event"] == "run" for x in e))
            assert new[-1]["data"]["run_id"] == "b0000000-new"
    finally:
        app.state.flowtel.engine.dispose()


def test_events_follow_one_run_to_its_end(db_url: str, engine: Engine, run_ids: list[str]) -> None:
    """/api/events?run=... sends that run's state, then its end."""
    app = create_app(db_url, poll_interval=0.1)
    try:
        with (
            serving(app) as base,
            httpx.stream(
                "GET", f"{base}/api/events", params={"run": RUNNING[:10]}, timeout=30
            ) as resp,
        ):
            lines = resp.iter_lines()
            first = read_events(lines, lambda e: any(x["event"] == "run" for x in e))
            assert first[-1]["data"]["status"] == "running"
            with engine.begin() as conn:
                conn.execute(
                    update(workflow_history)
                    .where(workflow_history.c.run_id == RUNNING)
                    .values(status="completed", completed_at=dt.datetime.now(dt.UTC))
                )
            done = read_events(lines, lambda e: e[-1]["event"] == "run")
            assert done[-1]["data"]["status"] == "completed"
    finally:
        app.state.flowtel.engine.dispose()


def test_undated_run_is_reachable(client: TestClient) -> None:
    """A run without a start time is listed (last) and has a page."""
    assert client.get(f"/runs/{UNDATED}").status_code == 200


def test_root_path_prefixes_every_link(db_url: str, run_ids: list[str]) -> None:
    """Behind a proxy that serves /flowtel/ (serve --root-path /flowtel), the pages' links,
    assets and live stream URL carry the prefix."""
    app = create_app(db_url)
    with TestClient(app, root_path="/flowtel") as prefixed:
        page = prefixed.get("/")
        assert page.status_code == 200
        links = [a.get("href") or a.get("src") for _, a in parse(page.text).tags]
        local = [link for link in links if link and link.startswith("/")]
        assert local and all(link.startswith("/flowtel/") for link in local), local
        assert 'data-live-events="/flowtel/api/events"' in page.text
    app.state.flowtel.engine.dispose()


def test_open_pages_share_one_look_at_the_database(
    db_url: str, engine: Engine, run_ids: list[str]
) -> None:
    """Two open live streams cost one snapshot per poll interval, not one each."""
    poll, window = 0.2, 3.0
    app = create_app(db_url, poll_interval=poll)
    looks: list[float] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if "IN (" in statement.upper() and "workflow_history" in statement:
            looks.append(time.monotonic())  # the "runs in progress" query of each snapshot

    served = app.state.flowtel.engine
    sa_event.listen(served, "before_cursor_execute", count)
    try:
        with (
            serving(app) as base,
            httpx.stream("GET", f"{base}/api/events", timeout=30) as one,
            httpx.stream("GET", f"{base}/api/events", timeout=30) as two,
        ):
            lines = [one.iter_lines(), two.iter_lines()]
            for stream in lines:
                read_events(stream, lambda e: e[-1]["event"] == "ready")
            started = time.monotonic()
            time.sleep(window)
            during = [t for t in looks if started <= t < started + window]
        assert len(during) <= window / (0.9 * poll) + 2, len(during)
    finally:
        sa_event.remove(served, "before_cursor_execute", count)
        served.dispose()


def test_flowtel_serve_with_a_token_from_the_environment(tmp_path: Any) -> None:
    """`flowtel serve --host 0.0.0.0` with FLOWTEL_SERVE_TOKEN starts and guards every path."""
    url = f"sqlite:///{tmp_path}/h.db"
    writer = make_engine(url)
    create_schema(writer)
    seed_history(writer, completed=1)
    writer.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FLOWTEL_SERVE_TOKEN": "env-token", "PYTHONPATH": sys.path[0]}
    server = spawn(
        [sys.executable, "-m", "exporters.cli", "serve", "--db", url, "--host", "0.0.0.0",
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                first = httpx.get(f"{base}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "flowtel serve did not start"
                time.sleep(0.2)
        assert first.status_code == 401
        bearer = {"Authorization": "Bearer env-token"}
        assert httpx.get(f"{base}/api/health", headers=bearer).json()["status"] == "ok"
        assert httpx.get(f"{base}/", headers=bearer).status_code == 200
        assert httpx.get(f"{base}/", headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=30)
    assert "Traceback" not in err


def open_streams(stack: contextlib.ExitStack, url: str, count: int) -> list[Iterator[str]]:
    """Open *count* live streams on *url* (closed with *stack*), each read up to ``ready``; the
    line iterators are returned because dropping one closes its connection."""
    lines = []
    for _ in range(count):
        resp = stack.enter_context(httpx.stream("GET", url, timeout=30))
        assert resp.status_code == 200
        lines.append(resp.iter_lines())
        read_events(lines[-1], lambda e: e[-1]["event"] == "ready")
    return lines


def _statements_while_open(app: Any, base: str, streams: int, path: str, window: float) -> int:
    """SQL statements the server's engine runs during *window* s with *streams* open on *path*,
    counted once every stream has said ``ready``."""
    served = app.state.flowtel.engine
    counted: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        counted.append(statement)

    with contextlib.ExitStack() as stack:
        lines = open_streams(stack, f"{base}{path}", streams)
        sa_event.listen(served, "before_cursor_execute", count)
        try:
            time.sleep(window)
        finally:
            sa_event.remove(served, "before_cursor_execute", count)
        assert len(lines) == streams
    return len(counted)


def test_twenty_streams_of_one_run_cost_the_sql_of_one(
    db_url: str, engine: Engine, run_ids: list[str]
) -> None:
    """Twenty open pages of one live run run no more SQL than one page (within 50 % and a few
    statements for the edges of the window), since per-run streams share one snapshot."""
    app = create_app(db_url, poll_interval=0.1)
    path = f"/api/events?run={RUNNING}"
    try:
        with serving(app) as base:
            one = _statements_while_open(app, base, 1, path, 2.0)
            twenty = _statements_while_open(app, base, 20, path, 2.0)
        assert one > 0
        assert twenty <= one * 1.5 + 6, (one, twenty)
    finally:
        app.state.flowtel.engine.dispose()


def test_list_and_run_streams_share_one_snapshot(
    db_url: str, engine: Engine, run_ids: list[str]
) -> None:
    """A runs-list stream and ten run streams together run no more SQL than the list stream
    alone (within 50 % and a few statements)."""
    app = create_app(db_url, poll_interval=0.1)
    try:
        with serving(app) as base:
            alone = _statements_while_open(app, base, 1, "/api/events", 2.0)
            served = app.state.flowtel.engine
            with contextlib.ExitStack() as stack:
                lines = open_streams(stack, f"{base}/api/events?run={RUNNING}", 10)
                together = _statements_while_open(app, base, 1, "/api/events", 2.0)
                assert len(lines) == 10
            assert served is app.state.flowtel.engine
        assert alone > 0
        assert together <= alone * 1.5 + 6, (alone, together)
    finally:
        app.state.flowtel.engine.dispose()


def test_streams_past_the_cap_are_503_until_one_closes(db_url: str, run_ids: list[str]) -> None:
    """With max_streams=2, a third /api/events is 503 JSON with Retry-After; once a stream
    closes, a new one is served."""
    app = create_app(db_url, poll_interval=0.1, max_streams=2)
    try:
        with serving(app) as base:
            with (
                httpx.stream("GET", f"{base}/api/events", timeout=30) as one,
                httpx.stream("GET", f"{base}/api/events?run={RUNNING}", timeout=30) as two,
            ):
                lines = [one.iter_lines(), two.iter_lines()]
                for stream in lines:
                    read_events(stream, lambda e: e[-1]["event"] == "ready")
                third = httpx.get(f"{base}/api/events", timeout=30)
                assert third.status_code == 503
                assert third.headers["retry-after"] == "5"
                assert third.json()["error"] == "too_many_streams"
                assert "max-streams" in third.json()["message"]
                assert httpx.get(f"{base}/api/health", timeout=30).status_code == 200
            deadline = time.monotonic() + 20
            while True:  # the server notices the closed streams at its next poll
                with httpx.stream("GET", f"{base}/api/events", timeout=30) as again:
                    if again.status_code == 200:
                        ready = read_events(again.iter_lines(), lambda e: e[-1]["event"] == "ready")
                        break
                assert time.monotonic() < deadline, "the closed streams' slots never came back"
                time.sleep(0.2)
        assert ready[-1]["event"] == "ready"
    finally:
        app.state.flowtel.engine.dispose()


def test_flowtel_serve_max_streams_answers_503_past_it(tmp_path: Any) -> None:
    """`flowtel serve --max-streams 1`: one live stream is served, a second is 503 JSON while
    pages still answer."""
    url = f"sqlite:///{tmp_path}/h.db"
    writer = make_engine(url)
    create_schema(writer)
    seed_history(writer, completed=1)
    writer.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "exporters.cli", "serve", "--db", url, "--port", str(port),
         "--max-streams", "1", "--poll-interval", "0.1"],
        env={**os.environ, "PYTHONPATH": sys.path[0]}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "flowtel serve did not start"
                time.sleep(0.2)
        with httpx.stream("GET", f"{base}/api/events", timeout=30) as first:
            lines = first.iter_lines()
            read_events(lines, lambda e: e[-1]["event"] == "ready")
            second = httpx.get(f"{base}/api/events", timeout=30)
            assert second.status_code == 503
            assert second.json()["error"] == "too_many_streams"
            assert httpx.get(f"{base}/", timeout=30).status_code == 200
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=30)
    assert "Traceback" not in err


def test_pages_show_the_short_error_type_titled_with_the_full_one(
    client: TestClient, engine: Engine
) -> None:
    """The run and stats pages show an error's class name, as the CLI does, with the qualified
    type as its title; the API keeps the qualified type."""
    run_id = seed_wide_run(engine)
    short = LONG_ERROR_TYPE.rsplit(".", 1)[-1]
    for path in (f"/runs/{run_id}", "/stats?since=30d"):
        page = client.get(path).text
        assert f'<span class="etype" title="{LONG_ERROR_TYPE}">{short}</span>' in page, path
        assert f">{LONG_ERROR_TYPE}" not in page, path
    assert client.get(f"/api/runs/{run_id}").json()["error_type"] == LONG_ERROR_TYPE


def test_shared_streams_say_unavailable_while_the_database_is_down_then_resume(
    private_postgres: PrivatePostgres,
) -> None:
    """With the database stopped, a list stream and a run stream (sharing one snapshot) each
    get an ``unavailable`` event; once it is back, both send the run's next change."""
    url = private_postgres.new_database()
    writer = make_engine(url)
    create_schema(writer)
    seed_history(writer)
    app = create_app(url, poll_interval=0.1)
    stopped = False
    try:
        with (
            serving(app) as base,
            httpx.stream("GET", f"{base}/api/events", timeout=60) as listing,
            httpx.stream("GET", f"{base}/api/events?run={RUNNING}", timeout=60) as one,
        ):
            streams = [listing.iter_lines(), one.iter_lines()]
            for lines in streams:
                read_events(lines, lambda e: e[-1]["event"] == "ready")
            writer.dispose()
            private_postgres.stop()
            stopped = True
            for lines in streams:
                down = read_events(lines, lambda e: e[-1]["event"] == "unavailable", limit=60)
                assert "OperationalError" in down[-1]["data"]["message"]
            private_postgres.start()
            stopped = False
            with writer.begin() as conn:
                conn.execute(
                    update(workflow_history)
                    .where(workflow_history.c.run_id == RUNNING)
                    .values(steps_completed=2, current_step="after-the-outage")
                )
            for lines in streams:
                back = read_events(
                    lines,
                    lambda e: (
                        e[-1]["event"] == "run"
                        and e[-1]["data"]["current_step"] == "after-the-outage"
                    ),
                    limit=60,
                )
                assert back[-1]["data"]["run_id"] == RUNNING
    finally:
        if stopped:
            private_postgres.start()
        writer.dispose()
        app.state.flowtel.engine.dispose()


def test_streams_of_a_stopped_database_try_to_connect_as_one(
    private_postgres: PrivatePostgres,
) -> None:
    """With the database stopped, ten open streams make no more connection attempts than one
    (within 50 % and a few), since a failed look is shared like a snapshot."""
    url = private_postgres.new_database()
    writer = make_engine(url)
    create_schema(writer)
    seed_history(writer)
    writer.dispose()
    stopped = False
    try:
        counts = []
        for run_streams in (10, 0):
            app = create_app(url, poll_interval=0.1)
            served = app.state.flowtel.engine
            attempts: list[float] = []
            counting = [False]

            def count(*_: Any, attempts: list[float] = attempts, on: list[bool] = counting) -> None:
                if on[0]:
                    attempts.append(time.monotonic())

            sa_event.listen(served, "do_connect", count)  # before the first connection
            try:
                with serving(app) as base, contextlib.ExitStack() as stack:
                    streams = open_streams(stack, f"{base}/api/events?run={RUNNING}", run_streams)
                    streams += open_streams(stack, f"{base}/api/events", 1)
                    private_postgres.stop()
                    stopped = True
                    for lines in streams:
                        read_events(lines, lambda e: e[-1]["event"] == "unavailable", limit=60)
                    counting[0] = True
                    time.sleep(3.0)
                    counting[0] = False
                    private_postgres.start()
                    stopped = False
            finally:
                served.dispose()
            counts.append(len(attempts))
        eleven, alone = counts
        assert alone > 0
        assert eleven <= alone * 1.5 + 3, (alone, eleven)
    finally:
        if stopped:
            private_postgres.start()


def test_refused_streams_give_their_place_back(db_url: str, run_ids: list[str]) -> None:
    """With max_streams=1, three streams refused for an unknown run (404) hold no place: a
    real stream is served after them."""
    app = create_app(db_url, poll_interval=0.1, max_streams=1)
    try:
        with serving(app) as base:
            for _ in range(3):
                missing = httpx.get(f"{base}/api/events", params={"run": "nope"}, timeout=30)
                assert missing.status_code == 404
                assert missing.json()["error"] == "run_not_found"
            assert app.state.flowtel.live.open_streams == 0
            with httpx.stream("GET", f"{base}/api/events?run={RUNNING}", timeout=30) as resp:
                assert resp.status_code == 200
                ready = read_events(resp.iter_lines(), lambda e: e[-1]["event"] == "ready")
        assert ready[-1]["data"]["watching"] == 1
    finally:
        app.state.flowtel.engine.dispose()


def test_max_streams_below_one_is_a_value_error() -> None:
    """create_app(max_streams=0) raises ValueError naming max_streams."""
    with pytest.raises(ValueError, match="max_streams must be at least 1"):
        create_app("sqlite:////nonexistent-dir/history.db", max_streams=0)
