"""Shared fixtures: one tracer provider for the session, real databases per backend.

The global tracer provider is installed once (the OpenTelemetry API allows that only once per
process) with a switchboard processor; each test plugs its own processors into it, so tests
never leak spans into each other. Database tests run against a real SQLite file, a real
PostgreSQL and a real MariaDB. Server URLs come from ``FLOWTEL_TEST_POSTGRES_URL`` and
``FLOWTEL_TEST_MYSQL_URL`` (``eval "$(bash .ci/databases.sh)"`` starts both and prints them);
under CI (``CI=true``) or ``FLOWTEL_REQUIRE_SERVICES=1`` a missing server fails the test instead
of skipping it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.db.schema import metadata, workflow_history, workflow_step_history
from tests.pg_private import private_postgres  # noqa: F401 - the fixture, registered once
from tests.spawn import reap_spawned  # noqa: F401 - autouse: every test's children stopped

BACKENDS = ("sqlite", "postgresql", "mysql")
SERVER_ENV = {"postgresql": "FLOWTEL_TEST_POSTGRES_URL", "mysql": "FLOWTEL_TEST_MYSQL_URL"}
REQUIRE_SERVICES = (
    os.environ.get("CI", "").lower() == "true" or os.environ.get("FLOWTEL_REQUIRE_SERVICES") == "1"
)


def missing_service(what: str, how: str) -> None:
    """Fail under CI, skip locally, naming what enables the test."""
    message = f"{what} is not available: {how}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (CI requires it)", pytrace=False)
    pytest.skip(message)


class Switchboard(SpanProcessor):
    """Forwards span callbacks to whatever processors the current test plugged in."""

    def __init__(self) -> None:
        self.targets: list[SpanProcessor] = []

    def on_start(self, span: Span, parent_context: Any = None) -> None:
        for target in self.targets:
            target.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for target in self.targets:
            target.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(t.force_flush(timeout_millis) for t in self.targets)


_SWITCHBOARD = Switchboard()
_PROVIDER = TracerProvider(shutdown_on_exit=False)
_PROVIDER.add_span_processor(_SWITCHBOARD)
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture(autouse=True)
def _private_spool(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    """Each test spools into a directory of its own, never the user's cache or a neighbour's."""
    monkeypatch.setenv("FLOWTEL_SPOOL_DIR", str(tmp_path_factory.mktemp("spool")))


@pytest.fixture(autouse=True)
def _fresh_logging_state() -> Iterator[None]:
    """Each test starts with structlog's defaults and leaves stdlib logging as it found it.

    ``configure()`` run in-process installs a structlog configuration, a log-record factory
    (the bridge) and a root handler; without this reset they would shape every later test's
    output and hide order-dependent failures.
    """
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    factory = logging.getLogRecordFactory()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    logging.setLogRecordFactory(factory)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture
def tracer_provider() -> Iterator[TracerProvider]:
    """The global SDK tracer provider, with no processor plugged in yet."""
    _SWITCHBOARD.targets = []
    yield _PROVIDER
    _SWITCHBOARD.targets = []


@pytest.fixture
def span_exporter(tracer_provider: TracerProvider) -> InMemorySpanExporter:
    """Collects every span the test creates, in end order."""
    exporter = InMemorySpanExporter()
    _SWITCHBOARD.targets.append(SimpleSpanProcessor(exporter))
    return exporter


def _server_url(backend: str) -> str:
    variable = SERVER_ENV[backend]
    url = os.environ.get(variable)
    if not url:
        missing_service(backend, f'set {variable} (eval "$(bash .ci/databases.sh)")')
    return str(url)


def _drop_database(admin: sa.Engine, backend: str, name: str) -> None:
    """Drop ``name``, retrying for up to 30 s on any database error.

    A child process's last connection may linger a moment, and PostgreSQL's ``WITH (FORCE)``
    cannot end an autovacuum worker for a role that is not a superuser (it raises
    ``InsufficientPrivilege``) — the worker leaves by itself within seconds.
    """
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    deadline = time.monotonic() + 30
    while True:
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
            return
        except sa.exc.DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextmanager
def fresh_server_database(backend: str, prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on a server backend, dropped afterwards whatever happens.

    A server that is not configured or does not answer skips the test locally and fails it under
    CI (``missing_service``).
    """
    base = sa.make_url(_server_url(backend))
    name = f"{prefix}_{os.getpid()}_{random.getrandbits(24):06x}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        except sa.exc.OperationalError as exc:
            missing_service(backend, f"cannot connect ({type(exc).__name__}); start it")
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            _drop_database(admin, backend, name)
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def server_database() -> Iterator[dict[str, str]]:
    """A throw-away database per server backend for this test session (created lazily)."""
    with ExitStack() as databases:

        class Lazy(dict[str, str]):
            def __missing__(self, backend: str) -> str:
                url = databases.enter_context(fresh_server_database(backend, "flowtel_test"))
                self[backend] = url
                return url

        yield Lazy()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Any, server_database: Any) -> str:
    """A URL of an empty history database on each backend (SQLite file, PostgreSQL, MariaDB)."""
    backend = request.param
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/history.db"
    url = str(server_database[backend])
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()
    return url


class History:
    """A history processor plugged into the test's provider, plus read helpers."""

    def __init__(self, url: str, **options: Any) -> None:
        self.engine = make_engine(url)
        self.processor = WorkflowHistorySpanProcessor(self.engine, **options)

    def flush(self) -> None:
        assert self.processor.force_flush(10_000), self.processor.stats

    def runs(self, **where: Any) -> list[sa.Row[Any]]:
        query = sa.select(workflow_history).order_by(workflow_history.c.id)
        for key, value in where.items():
            query = query.where(workflow_history.c[key] == value)
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    def steps(self, run_id: str) -> list[sa.Row[Any]]:
        table = workflow_step_history
        query = (
            sa.select(table)
            .where(table.c.run_id == run_id)
            .order_by(table.c.step_index, table.c.attempt)
        )
        with self.engine.connect() as connection:
            return list(connection.execute(query))


@pytest.fixture
def history(db_url: str, tracer_provider: TracerProvider) -> Iterator[History]:
    """Workflow history recorded into ``db_url`` from every span the test creates."""
    recorder = History(db_url)
    _SWITCHBOARD.targets.append(recorder.processor)
    yield recorder
    recorder.processor.shutdown(10_000)
    recorder.engine.dispose()
