"""Sampling decides what the collector sees, never what the history holds."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import format_trace_id

from exporters import AuditSampler
from exporters.telemetry.sampling import sampler_from_env
from instrumentation import workflow_run
from instrumentation.attributes import RUN_ID
from tests.collector_support import run_child
from tests.conftest import History


class SeededIds(IdGenerator):
    """Reproducible random ids, so the sampled set is known exactly."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128) or 1


class Pipeline:
    """A private provider: the audit sampler, SQL history, and what an exporter would get."""

    def __init__(self, tmp_path: Path, sampler: Sampler) -> None:
        self.provider = TracerProvider(
            sampler=AuditSampler(sampler), id_generator=SeededIds(4), shutdown_on_exit=False
        )
        self.history = History(f"sqlite:///{tmp_path}/history.db")
        self.exported = InMemorySpanExporter()
        self.provider.add_span_processor(self.history.processor)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exported))

    def run(self, runs: int) -> None:
        for _ in range(runs):
            with workflow_run("provision_server", tracer_provider=self.provider) as run:
                with run.step("select"):
                    pass
                with run.step("commission"):
                    pass
        self.history.flush()

    def exported_traces(self) -> dict[str, list[str]]:
        traces: dict[str, list[str]] = {}
        for span in self.exported.get_finished_spans():
            traces.setdefault(format_trace_id(span.context.trace_id), []).append(span.name)
        return traces


@pytest.fixture
def pipeline(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    built = Pipeline(tmp_path, request.param)
    yield built
    built.history.processor.shutdown(5_000)


RUNS = 400


@pytest.mark.parametrize("pipeline", [ParentBased(TraceIdRatioBased(0.01))], indirect=True)
def test_ratio_one_percent_keeps_every_run_in_sql(pipeline: Pipeline) -> None:
    """100 % of runs reach SQL; exactly the traces the ratio selects (about 1 %) are exported."""
    pipeline.run(RUNS)
    rows = pipeline.history.runs()
    assert len(rows) == RUNS
    bound = TraceIdRatioBased.get_bound_for_rate(0.01)
    selected = {row.trace_id for row in rows if int(row.trace_id, 16) & (2**64 - 1) < bound}
    traces = pipeline.exported_traces()
    assert set(traces) == selected
    assert 0 < len(traces) <= RUNS * 3 // 100
    for names in traces.values():
        assert sorted(names) == ["commission", "provision_server", "select"]  # whole traces


@pytest.mark.parametrize("pipeline", [ALWAYS_OFF], indirect=True)
def test_zero_percent_gives_rows_and_no_exported_span(pipeline: Pipeline) -> None:
    pipeline.run(30)
    rows = pipeline.history.runs()
    assert len(rows) == 30 and {row.status for row in rows} == {"completed"}
    assert all(len(pipeline.history.steps(row.run_id)) == 2 for row in rows)
    assert pipeline.exported.get_finished_spans() == ()


@pytest.mark.parametrize("pipeline", [ALWAYS_ON], indirect=True)
def test_hundred_percent_gives_one_trace_per_run(pipeline: Pipeline) -> None:
    pipeline.run(30)
    traces = pipeline.exported_traces()
    assert len(traces) == 30 == len(pipeline.history.runs())


def test_drop_becomes_record_only_with_the_callers_attributes() -> None:
    attributes = {RUN_ID: "r-1", "workflow.name": "wf"}
    result = AuditSampler(ALWAYS_OFF).should_sample(None, 7, "wf", attributes=attributes)
    assert result.decision is Decision.RECORD_ONLY
    assert dict(result.attributes) == attributes
    other = AuditSampler(ALWAYS_OFF).should_sample(None, 7, "GET /", attributes={"http": "x"})
    assert other.decision is Decision.DROP
    sampled = AuditSampler(ALWAYS_ON).should_sample(None, 7, "wf", attributes=attributes)
    assert sampled.decision is Decision.RECORD_AND_SAMPLE
    assert AuditSampler(ALWAYS_OFF).get_description() == "AuditSampler{AlwaysOffSampler}"


def test_third_party_spans_under_an_unsampled_run_stay_dropped(tmp_path: Path) -> None:
    built = Pipeline(tmp_path, ParentBased(ALWAYS_OFF))
    tracer = built.provider.get_tracer("somelib")
    with workflow_run("wf", tracer_provider=built.provider) as run, run.step("s") as step:
        assert step.span.is_recording() and not step.span.get_span_context().trace_flags.sampled
        with tracer.start_as_current_span("http.get") as child:
            assert not child.is_recording()
    built.history.flush()
    assert len(built.history.steps(run.run_id)) == 1
    built.history.processor.shutdown(5_000)


def test_sampler_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    description = AuditSampler(sampler_from_env()).get_description()
    assert description.startswith("AuditSampler{ParentBased{root:TraceIdRatioBased{0.01}")


def test_configure_wraps_the_environment_sampler(tmp_path: Path) -> None:
    """configure() (in a fresh process) installs the audit sampler around the named one."""
    code = (
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from exporters import configure\n"
        f"h = configure(database_url='sqlite:///{tmp_path}/h.db', logs=False)\n"
        "print(h.tracer_provider.sampler.get_description())\n"
        "h.shutdown(2000)\n"  # configure() again only after the first handle is shut down
        f"configure(database_url='sqlite:///{tmp_path}/h2.db', tracer_provider=TracerProvider(),"
        " logs=False)\n"
    )
    env = {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}
    result = run_child(code, env)
    assert result.stdout.strip() == "AuditSampler{TraceIdRatioBased{0.25}}"
    assert "is not an AuditSampler" in result.stderr  # a provider of the user's is flagged
