"""No secret leaves the process: the raw database bytes, exported spans and logs are searched.

A run whose context holds an IPMI password, a BMC token, an SSH private key, nested
credentials and a database URL with a password, and whose failing step raises an exception
quoting that URL, must leave none of them in the SQLite file and its WAL, in any table or
column on PostgreSQL and MariaDB, in the exported spans or in what was logged or printed. A
database URL's own password must not appear in errors, logs, stats or ``flowtel`` output.
:func:`assert_no_secrets` is meant for reuse by the spool and collector tests.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters import DatabaseURLError, WorkflowHistorySpanProcessor, make_engine
from instrumentation import workflow_run
from instrumentation.redaction import redaction_processor
from tests.conftest import History

SECRET_URL = "postgresql://u:secret@db/x"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
SECRET_CONTEXT: dict[str, Any] = {
    "server_id": "srv-42",
    "device_type": "a1_c5_large",
    "ipmi_password": "Ipmi-Pw-7f3Q",
    "bmc_token": "Bmc-Tok-9kZ2",
    "ssh_private_key": PRIVATE_KEY,
    "credentials": {"password": "Nested-Pw-4xR8"},
    "database_url": SECRET_URL,
}
SECRETS: tuple[bytes, ...] = (
    b"Ipmi-Pw-7f3Q",
    b"Bmc-Tok-9kZ2",
    b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
    b"Nested-Pw-4xR8",
    b"Cookie-Val-3Jm",
    b":secret@",
    b"secret@db",
)
"""Every secret the scenario passes in; none may be found anywhere afterwards."""


def assert_no_secrets(blob: bytes, secrets: tuple[bytes, ...] = SECRETS) -> None:
    """Fail naming each secret found in *blob* (raw bytes: a file, a dump, captured output)."""
    found = [secret.decode() for secret in secrets if secret in blob]
    assert not found, f"secrets leaked: {found}"


class StoreUnreachable(ConnectionError):
    """The failing step's error, quoting a URL with credentials."""


def connect(url: str) -> None:
    """Fail the way a driver does, with the URL (and its password) in the message."""
    raise StoreUnreachable(f"cannot reach {url}: connection refused")


def run_with_secrets(log: Any) -> str:
    """The issue's scenario; returns the run id. Logs through *log* on the way."""
    run_id = ""
    with (
        pytest.raises(StoreUnreachable),
        workflow_run(
            "provision_server",
            workflow_id="provision_srv-42",
            context=SECRET_CONTEXT,
            total_steps=3,
        ) as run,
    ):
        run_id = run.run_id
        with run.step("power_on") as step:
            step.set_message("IPMI answered")
        run.set_context(session_cookie="Cookie-Val-3Jm")
        with run.step("connect_database"):
            try:
                connect(SECRET_CONTEXT["database_url"])
            except StoreUnreachable:
                log.error("step failed", context=SECRET_CONTEXT, exc_info=True)
                raise
    return run_id


def _structlog(stream: io.StringIO) -> Any:
    return structlog.wrap_logger(
        structlog.PrintLogger(stream),
        processors=[
            structlog.processors.format_exc_info,
            redaction_processor,
            structlog.processors.JSONRenderer(),
        ],
    )


def dump_tables(engine: sa.Engine) -> bytes:
    """Every row of every table in the database, every column as text."""
    chunks: list[str] = []
    with engine.connect() as connection:
        for name in sa.inspect(connection).get_table_names():
            table = sa.Table(name, sa.MetaData(), autoload_with=connection)
            for row in connection.execute(sa.select(table)):
                chunks.append(repr(tuple(row)))
    return "\n".join(chunks).encode()


def sqlite_files(engine: sa.Engine) -> bytes:
    """The raw bytes of the SQLite database and its -wal and -shm files."""
    database = Path(str(engine.url.database))
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    assert files[1].exists(), "the WAL should hold the recent writes"
    return b"".join(path.read_bytes() for path in files if path.exists())


def test_no_secret_reaches_database_spans_or_logs(
    history: History,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's scenario, searched in every place a secret could end up."""
    caplog.set_level(logging.DEBUG)
    stream = io.StringIO()
    run_id = run_with_secrets(_structlog(stream))
    history.flush()

    (row,) = history.runs(run_id=run_id)
    assert row.status == "failed"
    tables = dump_tables(history.engine)
    assert b"[REDACTED]" in tables and b"srv-42" in tables  # the rows were really read
    assert_no_secrets(tables)
    if history.engine.url.get_backend_name() == "sqlite":
        raw = sqlite_files(history.engine)
        assert b"srv-42" in raw
        assert_no_secrets(raw)

    spans = span_exporter.get_finished_spans()
    assert len(spans) == 3
    exported = "\n".join(span.to_json() for span in spans).encode()
    assert b"postgresql://u:[REDACTED]@db/x" in exported
    assert_no_secrets(exported)

    logged = stream.getvalue()
    assert "StoreUnreachable" in logged and "[REDACTED]" in logged
    captured = capsys.readouterr()
    records = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.__dict__}" for r in caplog.records)
    assert_no_secrets(f"{logged}\n{captured.out}\n{captured.err}\n{records}".encode())


def test_assert_no_secrets_finds_a_leak() -> None:
    """The helper itself fails on any secret (so the test above can fail)."""
    with pytest.raises(AssertionError, match="Bmc-Tok-9kZ2"):
        assert_no_secrets(b"...Bmc-Tok-9kZ2...")
    with pytest.raises(AssertionError, match=":secret@"):
        assert_no_secrets(SECRET_URL.encode())


DB_PASSWORD = "Db-Pw-5tLq8"
UNREACHABLE = f"postgresql+psycopg://flowtel:{DB_PASSWORD}@127.0.0.1:1/flowtel"


def test_database_password_in_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    """A write failure is logged and counted with the URL's password masked."""
    caplog.set_level(logging.DEBUG)
    engine = make_engine(UNREACHABLE)
    processor = WorkflowHistorySpanProcessor(engine)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    with workflow_run("wf", tracer_provider=provider):
        pass
    assert not processor.force_flush(5_000)
    stats = processor.stats
    processor.shutdown(1_000)
    assert stats["write_errors"]
    shown = f"{caplog.text}\n{stats}\n{engine!r}\n{engine.url}"
    assert "127.0.0.1" in caplog.text
    assert DB_PASSWORD not in shown


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{DB_PASSWORD}@db:notaport/x",
        f"postgresql+nosuchdriver://u:{DB_PASSWORD}@db/x",
        f"nosuchdialect://u:{DB_PASSWORD}@db/x",
    ],
)
def test_database_password_in_url_errors(url: str) -> None:
    """Unparseable URLs and unknown drivers raise DatabaseURLError without the password."""
    with pytest.raises(DatabaseURLError) as info:
        make_engine(url)
    assert DB_PASSWORD not in f"{info.value}{info.value!r}"


def test_database_password_in_cli_output() -> None:
    """``flowtel runs --db URL`` against an unreachable database prints no password."""
    from exporters.cli import main

    result = CliRunner().invoke(main, ["runs", "--db", UNREACHABLE])
    assert result.exit_code != 0
    assert "127.0.0.1" in result.output
    assert DB_PASSWORD not in result.output
