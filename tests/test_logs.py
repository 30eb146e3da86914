"""Log lines carry their step's ids, and warnings and errors land on the span and the step row."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from exporters.telemetry.logs import (
    ID_KEYS,
    add_log_event,
    configure_logging,
    current_ids,
    uninstall_logging_bridge,
)
from instrumentation import workflow_run
from instrumentation.attributes import LOG_EVENT, LOG_LOGGER, LOG_MESSAGE, LOG_SEVERITY
from tests.collector_support import run_child
from tests.conftest import History


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """structlog configured by flowtel to write JSON here; logging restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    yield stream
    uninstall_logging_bridge()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def ids_of(span: Any) -> tuple[str, str]:
    context = span.get_span_context()
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def test_every_event_in_a_step_carries_that_steps_ids(
    out: io.StringIO, span_exporter: InMemorySpanExporter
) -> None:
    log = structlog.get_logger()
    expected = []
    with workflow_run("provision_server", workflow_id="provision_s1") as run:
        log.info("run started")
        expected.append((*ids_of(run.span), None))
        for name in ("select", "commission", "validate"):
            with run.step(name) as step:
                log.debug("working", detail=1)
                log.info("done")
                expected += [(*ids_of(step.span), name)] * 2
    events = lines(out)
    assert [(e["trace_id"], e["span_id"], e.get("step")) for e in events] == expected
    assert {e["run_id"] for e in events} == {run.run_id}
    assert {e["workflow_id"] for e in events} == {"provision_s1"}
    assert len({e["trace_id"] for e in events}) == 1


def test_async_steps_keep_their_own_ids(
    out: io.StringIO, span_exporter: InMemorySpanExporter
) -> None:
    log = structlog.get_logger()

    async def main() -> dict[str, str]:
        async with workflow_run("wf") as run:

            async def one(name: str) -> tuple[str, str]:
                async with run.step(name) as step:
                    await asyncio.sleep(0.01)
                    log.info("in step", name=name)
                    return name, ids_of(step.span)[1]

            return dict(await asyncio.gather(one("a"), one("b")))

    spans = asyncio.run(main())
    assert {e["name"]: e["span_id"] for e in lines(out)} == spans


def test_warnings_and_errors_become_span_events_and_step_logs(
    tmp_path: Path, out: io.StringIO, span_exporter: InMemorySpanExporter
) -> None:
    history = History(f"sqlite:///{tmp_path}/history.db")
    from tests.conftest import _SWITCHBOARD

    _SWITCHBOARD.targets.append(history.processor)
    log = structlog.get_logger()
    with pytest.raises(RuntimeError), workflow_run("wf") as run, run.step("configure_ipmi"):
        log.info("not mirrored")
        log.warning("bmc slow", attempt=2, password="hunter2")
        logging.getLogger("myapp.ipmi").error("bmc %s unreachable", "10.0.0.9")
        raise RuntimeError("gave up")
    history.flush()
    step_span = next(s for s in span_exporter.get_finished_spans() if s.name == "configure_ipmi")
    logged = [dict(e.attributes or {}) for e in step_span.events if e.name == LOG_EVENT]
    assert logged[0][LOG_SEVERITY] == "warning"
    assert logged[0][LOG_MESSAGE].startswith("bmc slow attempt=2 password=")
    assert "hunter2" not in logged[0][LOG_MESSAGE]
    assert logged[1] == {
        LOG_SEVERITY: "error",
        LOG_MESSAGE: "bmc 10.0.0.9 unreachable",
        LOG_LOGGER: "myapp.ipmi",
    }
    assert len(logged) == 2
    (row,) = history.steps(run.run_id)
    assert [(line["severity"], line["logger"]) for line in row.logs] == [
        ("warning", None),
        ("error", "myapp.ipmi"),
    ]
    assert "hunter2" not in json.dumps(row.logs)
    history.processor.shutdown(5_000)


def test_stdlib_records_get_the_ids(out: io.StringIO, span_exporter: InMemorySpanExporter) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("flowtel.test.stdlib")
    logger.addHandler(keep := Keep())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # mirroring needs no handler on the root logger
    try:
        logger.info("outside")
        with workflow_run("wf", workflow_id="wf-1") as run, run.step("s") as step:
            logger.info("inside")
            logger.warning("careful")
    finally:
        logger.removeHandler(keep)
        logger.propagate = True
    outside, inside, _ = records
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "s"]
    assert [dict(e.attributes or {})[LOG_MESSAGE] for e in span.events] == ["careful"]
    assert all(getattr(outside, key) is None for key in ID_KEYS)
    assert (inside.trace_id, inside.span_id) == ids_of(step.span)  # type: ignore[attr-defined]
    assert (inside.run_id, inside.workflow_id, inside.step) == (  # type: ignore[attr-defined]
        run.run_id,
        "wf-1",
        "s",
    )


def test_outside_any_span_nothing_is_added(out: io.StringIO) -> None:
    assert current_ids() == {}
    assert add_log_event("warning", "nowhere") is False
    structlog.get_logger().warning("plain")
    (event,) = lines(out)
    assert not set(ID_KEYS) & set(event)


def test_console_format_and_bad_arguments(span_exporter: InMemorySpanExporter) -> None:
    stream = io.StringIO()
    try:
        assert configure_logging("console", "INFO", stream=stream) == "console"
        with workflow_run("wf") as run, run.step("s"):
            structlog.get_logger().info("hello")
        assert "hello" in stream.getvalue() and run.run_id in stream.getvalue()
        with pytest.raises(ValueError, match="log format"):
            configure_logging("xml")
        with pytest.raises(ValueError, match="log level"):
            configure_logging("json", "LOUD")
    finally:
        uninstall_logging_bridge()
        structlog.reset_defaults()


CHILD = """
import logging, structlog
from exporters import configure
configure(database_url={url!r}, logs={logs!r})
print(structlog.is_configured(), len(logging.getLogger().handlers))
from instrumentation import workflow_run
with workflow_run("wf") as run, run.step("s"):
    logging.getLogger("app").warning("stdlib says hi")
    print(run.run_id)
"""


def test_configure_sets_logging_up_unless_told_not_to(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/h.db"
    off = run_child(CHILD.format(url=url, logs=False))
    assert off.stdout.splitlines()[0] == "False 0"
    on = run_child(CHILD.format(url=url, logs="json"))
    configured, run_id = on.stdout.splitlines()
    assert configured == "True 1"  # a stderr handler, since the root logger had none
    (record,) = [json.loads(x) for x in on.stderr.splitlines() if "stdlib says hi" in x]
    assert record["run_id"] == run_id and record["step"] == "s" and record["logger"] == "app"
    assert len(record["trace_id"]) == 32 and len(record["span_id"]) == 16


def test_ended_span_and_provider_edge_cases(
    out: io.StringIO, tracer_provider: TracerProvider
) -> None:
    """Logging about an ended span, or with no SDK span at all, never raises or recurses."""
    with workflow_run("wf") as run:
        pass
    from opentelemetry import context, trace

    token = context.attach(trace.set_span_in_context(run.span))
    try:
        structlog.get_logger().error("after the end")
        logging.getLogger("late").error("after the end too")
    finally:
        context.detach(token)
    assert [e["event"] for e in lines(out)] == ["after the end"]


SECRETS = ("hunter2", "tok-123", "pw-url", "exc-tok", "tb-secret")


@pytest.fixture(params=["json", "console"])
def any_format(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """flowtel's logging in either format, writing to a buffer; logging restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    root.handlers[:] = []
    stream = io.StringIO()
    configure_logging(str(request.param), "DEBUG", stream=stream)
    yield stream
    uninstall_logging_bridge()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _fail(text: str) -> None:
    raise ConnectionError(text)


def test_no_secret_reaches_a_log_line(any_format: io.StringIO) -> None:
    """structlog fields, stdlib messages, exception text and tracebacks are all redacted."""
    log = structlog.get_logger()
    std = logging.getLogger("app")
    log.warning("x", password="hunter2")
    std.warning("login with password=%s", "tok-123")
    std.warning("connecting to postgresql://u:pw-url@db/x")
    try:
        _fail("refused: token=exc-tok")
    except ConnectionError:
        log.exception("structlog saw it")
        std.exception("stdlib saw it")
    try:
        raise RuntimeError("api_key=tb-secret")
    except RuntimeError:
        std.error("with exc_info", exc_info=True)
    text = any_format.getvalue()
    assert [s for s in SECRETS if s in text] == []
    for visible in ("structlog saw it", "stdlib saw it", "with exc_info", "postgresql://u:"):
        assert visible in text
    assert text.count("ConnectionError") >= 2 and "RuntimeError" in text
    assert "<traceback object" not in text  # exc_info rendered as text, not a repr tuple
    assert "Traceback (most recent call last)" in text


def test_an_applications_own_handler_gets_redacted_records(any_format: io.StringIO) -> None:
    """The bridge masks records themselves, so handlers flowtel did not add print no secret."""
    theirs = io.StringIO()
    handler = logging.StreamHandler(theirs)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    std = logging.getLogger("theirs")
    std.addHandler(handler)
    try:
        std.warning("db_password=%s", "hunter2")
        std.warning("nothing secret %d", 5)
        try:
            _fail("token=exc-tok")
        except ConnectionError:
            std.exception("failed")
    finally:
        std.removeHandler(handler)
    text = theirs.getvalue()
    assert [s for s in SECRETS if s in text] == []
    assert "db_password=[REDACTED]" in text and "nothing secret 5" in text
    assert "Traceback (most recent call last)" in text and "token=[REDACTED]" in text


SECRET_CHILD = """
import logging, structlog
from exporters import configure
handle = configure(database_url={url!r}, otlp=False)
structlog.get_logger().warning("x", password="hunter2")
logging.getLogger("app").warning("connecting to postgresql://u:pw-url@db/x")
try:
    raise ConnectionError("refused: token=exc-tok")
except ConnectionError:
    structlog.get_logger().exception("structlog saw it")
    logging.getLogger("app").error("stdlib saw it", exc_info=True)
handle.shutdown(2000)
"""


def test_configure_defaults_print_no_secret(tmp_path: Path) -> None:
    """The issue's reproduction: configure() with its logging defaults, in a fresh process."""
    done = run_child(SECRET_CHILD.format(url=f"sqlite:///{tmp_path}/h.db"))
    assert [s for s in SECRETS if s in done.stderr] == []
    assert "structlog saw it" in done.stderr and "stdlib saw it" in done.stderr
    assert done.stderr.count("ConnectionError") >= 2 and "<traceback object" not in done.stderr
