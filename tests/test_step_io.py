"""Step inputs and outputs: opt-in per step, redacted and bounded JSON in the step row, shown by
``flowtel show`` and the run page, and left off exported traces unless asked for."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters.cli import main
from exporters.db import migrations
from exporters.db.engine import make_engine
from exporters.serve.app import create_app
from exporters.telemetry.step_io import WithoutStepIO, export_step_io_from_env
from instrumentation import attributes as attr
from instrumentation import step, workflow, workflow_run
from instrumentation.limits import Limits, get_limits, set_limits
from tests.conftest import History
from tests.test_migrations import empty_url as empty_url  # the fixture: a database of its own


class Machine:
    """Not JSON: stored as its repr."""

    def __repr__(self) -> str:
        return "Machine('srv-7')"


def test_record_io_stores_arguments_by_name_redacted_and_the_return_value(
    history: History,
) -> None:
    @step(record_io=True)
    def configure_ipmi(server: str, password: str, vlan: int = 12) -> dict[str, Any]:
        return {"ip": "10.30.0.7", "url": "https://admin:hunter2@bmc.example/"}

    @workflow(name="provision_server", total_steps=1)
    def provision() -> None:
        configure_ipmi("srv-7", password="hunter2")

    provision()
    history.flush()
    [run] = history.runs()
    [row] = history.steps(run.run_id)
    assert row.input == {"server": "srv-7", "password": "[REDACTED]", "vlan": 12}
    assert row.output["ip"] == "10.30.0.7"
    assert "hunter2" not in json.dumps(row.output)


def test_record_io_on_an_async_step_records_the_awaited_value(history: History) -> None:
    @step(record_io=True)
    async def discover(server: str) -> list[str]:
        await asyncio.sleep(0)
        return ["eth0", "eth1"]

    @workflow(name="discover", total_steps=1)
    async def run() -> None:
        await discover("srv-7")

    asyncio.run(run())
    history.flush()
    [row] = history.steps(history.runs()[0].run_id)
    assert (row.input, row.output) == ({"server": "srv-7"}, ["eth0", "eth1"])


def test_set_input_and_set_output_store_json_a_repr_for_objects_and_nothing_without_them(
    history: History,
) -> None:
    with workflow_run("provision_server", total_steps=2) as run:
        with run.step("select_machine") as handle:
            handle.set_input({"rack": "r1", "machine": Machine(), "api_key": "k-123"})
            handle.set_output(Machine())
        with run.step("allocate_machine"):
            pass
    history.flush()
    first, second = history.steps(history.runs()[0].run_id)
    assert first.input == {"rack": "r1", "machine": "Machine('srv-7')", "api_key": "[REDACTED]"}
    assert first.output == "Machine('srv-7')"
    assert (second.input, second.output) == (None, None)


def test_an_input_over_the_io_limit_is_cut_with_a_marker_and_the_row_still_lands(
    history: History,
) -> None:
    before = get_limits()
    set_limits(Limits(io_bytes=256))
    try:
        with workflow_run("provision_server", total_steps=1) as run, run.step(
            "push_bios_settings"
        ) as handle:
            handle.set_input({"settings": ["x" * 50] * 100})
    finally:
        set_limits(before)
    history.flush()
    [row] = history.steps(history.runs()[0].run_id)
    assert len(json.dumps(row.input)) <= 256
    assert "truncated" in json.dumps(row.input)


def test_an_input_set_by_another_sender_is_redacted_and_bounded_in_the_row(
    history: History,
) -> None:
    raw = json.dumps({"token": "t-999", "nested": [[[[{"password": "p"}]]]]})
    with workflow_run("provision_server", total_steps=1) as run, run.step(
        "select_machine"
    ) as handle:
        handle.span.set_attribute(attr.STEP_INPUT, raw)  # as a foreign SDK would send it
        handle.span.set_attribute(attr.STEP_OUTPUT, "not json {")
    history.flush()
    [row] = history.steps(history.runs()[0].run_id)
    assert "t-999" not in json.dumps(row.input) and '"p"' not in json.dumps(row.input)
    assert row.output == "not json {"


def test_exported_step_spans_leave_without_input_and_output_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(WithoutStepIO(exported)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("select_machine") as span:
        span.set_attribute(attr.STEP_NAME, "select_machine")
        span.set_attribute(attr.STEP_INPUT, '{"rack": "r1"}')
        span.set_attribute(attr.STEP_OUTPUT, '"ok"')
    with tracer.start_as_current_span("plain"):
        pass
    stripped, plain = exported.get_finished_spans()
    assert attr.STEP_INPUT not in (stripped.attributes or {})
    assert attr.STEP_OUTPUT not in (stripped.attributes or {})
    assert (stripped.attributes or {})[attr.STEP_NAME] == "select_machine"
    assert plain.name == "plain"
    provider.shutdown()
    monkeypatch.setenv("FLOWTEL_EXPORT_STEP_IO", "true")
    assert export_step_io_from_env() is True
    monkeypatch.setenv("FLOWTEL_EXPORT_STEP_IO", "maybe")
    with pytest.raises(ValueError, match="FLOWTEL_EXPORT_STEP_IO='maybe'"):
        export_step_io_from_env()


def _failed_run_with_io() -> None:
    with workflow_run("provision_server", workflow_id="provision_srv-7", total_steps=3) as run:
        with run.step("select_machine") as handle:
            handle.set_output({"machine": "srv-7", "rack": "r1"})
        with run.step("configure_network") as handle:
            handle.set_output({"ip": "10.20.0.7"})
        with run.step("setup_ipmi") as handle:
            handle.set_input({"bmc": "10.30.0.7", "password": "hunter2"})
            raise TimeoutError("BMC did not answer")


def test_flowtel_show_prints_the_failing_input_and_the_outputs_before_it_at_80_columns(
    history: History, db_url: str
) -> None:
    with pytest.raises(TimeoutError):
        _failed_run_with_io()
    history.flush()
    result = CliRunner(env={"COLUMNS": "80"}).invoke(main, ["show", "provision_srv-7",
                                                            "--db", db_url])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Input of the failing step" in out
    assert '{"bmc": "10.30.0.7", "password": "[REDACTED]"}' in out
    assert "Outputs of the steps before it" in out
    assert 'select_machine     {"machine": "srv-7", "rack": "r1"}' in out  # one key order
    assert 'configure_network  {"ip": "10.20.0.7"}' in out
    assert "hunter2" not in out
    assert max(len(line) for line in out.splitlines()) <= 80


@pytest.fixture
def served(history: History, db_url: str) -> Iterator[TestClient]:
    with pytest.raises(TimeoutError):
        _failed_run_with_io()
    history.flush()
    app = create_app(db_url)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client
    app.state.flowtel.engine.dispose()


def test_the_run_page_shows_each_steps_input_and_output(served: TestClient) -> None:
    page = served.get("/runs/provision_srv-7").text
    assert page.count('<details class="io-output">') == 2
    assert page.count('<details class="io-input">') == 1
    assert "&#34;password&#34;: &#34;[REDACTED]&#34;" in page
    detail = served.get("/api/runs/provision_srv-7").json()
    assert detail["steps"][2]["input"] == {"bmc": "10.30.0.7", "password": "[REDACTED]"}


def test_revision_0005_adds_the_columns_to_a_0002_database_keeping_its_steps(
    empty_url: str,
) -> None:
    engine = make_engine(empty_url)
    try:
        migrations.upgrade(engine, "0002")
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO workflow_step_history (run_id, span_id, step_index, step_name, "
                "attempt, status) VALUES ('run-1', 'span-1', 1, 'select_machine', 1, 'completed')"
            )
        result = migrations.upgrade(engine)
        assert result.to_revision == migrations.HEAD_REVISION
        assert any("input and output" in note for note in result.notes)
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT step_name, input, output FROM workflow_step_history")).all()  # fmt: skip
        assert [tuple(r) for r in rows] == [("select_machine", None, None)]
    finally:
        engine.dispose()


def test_io_bytes_limit_reads_its_environment_variable() -> None:
    assert Limits.from_env({"FLOWTEL_MAX_IO_BYTES": "4K"}).io_bytes == 4096
    with pytest.raises(ValueError, match="FLOWTEL_MAX_IO_BYTES"):
        Limits.from_env({"FLOWTEL_MAX_IO_BYTES": "lots"})
