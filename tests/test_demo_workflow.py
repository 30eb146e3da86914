"""Tests for exporters.cli.demo_workflow: 23 steps, seeded outcomes, retries, skips, redaction."""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import Counter
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from exporters.cli.demo_workflow import (
    STEPS,
    WORKFLOW_NAME,
    BiosVerificationError,
    RunOutcome,
    RunPlan,
    plan_runs,
    provision_server,
    provisioning_run,
    run_demo,
)

PLAN = RunPlan(
    server_id="srv-0042",
    device_type="s2_c2_small",
    server_ip="10.20.4.17",
    ipmi_ip="10.30.4.17",
    gateway="10.20.4.1",
    ipmi_password="hunter2-bmc-secret",
)


def attr(span: ReadableSpan, key: str) -> Any:
    """One attribute of *span* (None when absent)."""
    return (span.attributes or {}).get(key)


def run_plan(plan: RunPlan, provider: TracerProvider) -> None:
    """Run one provisioning of *plan*, letting its planned exception propagate."""
    with provisioning_run(plan, tracer_provider=provider) as run:
        provision_server(run, plan)


def step_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The finished step spans, in end order."""
    return [s for s in exporter.get_finished_spans() if s.name != WORKFLOW_NAME]


def run_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The single finished workflow span."""
    (span,) = [s for s in exporter.get_finished_spans() if s.name == WORKFLOW_NAME]
    return span


def attempts_of(exporter: InMemorySpanExporter, name: str) -> list[tuple[int, int, str]]:
    """(index, attempt, status) of every attempt of the step called *name*."""
    return [
        (
            attr(s, "workflow.step.index"),
            attr(s, "workflow.step.attempt"),
            attr(s, "workflow.step.status"),
        )
        for s in step_spans(exporter)
        if s.name == name
    ]


def test_workflow_declares_23_unique_steps_in_six_phases() -> None:
    """STEPS holds 23 distinct step names across the six phases, in phase order."""
    assert len({s.name for s in STEPS}) == 23
    phases = list(dict.fromkeys(s.phase for s in STEPS))
    assert phases == ["maas", "network", "hardware", "ipmi", "bios", "validation"]


def test_successful_run_has_23_completed_step_spans(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """A run without failure, retry or skip records the 23 steps in order, all completed."""
    run_plan(PLAN, tracer_provider)
    steps = step_spans(span_exporter)
    assert [s.name for s in steps] == [spec.name for spec in STEPS]
    assert {attr(s, "workflow.step.status") for s in steps} == {"completed"}
    assert attr(run_span(span_exporter), "workflow.status") == "completed"


def test_step_spans_are_children_of_the_run_span(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """Every step span's parent is the workflow span."""
    run_plan(PLAN, tracer_provider)
    run_context = run_span(span_exporter).context
    run_id = run_context.span_id if run_context else None
    assert {s.parent.span_id if s.parent else None for s in step_spans(span_exporter)} == {run_id}


def test_password_in_context_is_redacted(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """The IPMI password is recorded as [REDACTED] and appears in no span attribute."""
    run_plan(PLAN, tracer_provider)
    span = run_span(span_exporter)
    assert attr(span, "workflow.context.ipmi_password") == "[REDACTED]"
    assert attr(span, "workflow.context.server_id") == "srv-0042"
    spans = span_exporter.get_finished_spans()
    every_value = [str(v) for s in spans for v in (s.attributes or {}).values()]
    assert [v for v in every_value if PLAN.ipmi_password in v] == []


def test_run_uses_provision_workflow_id(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """The logical workflow id is provision_<server_id> with total_steps 23."""
    run_plan(PLAN, tracer_provider)
    span = run_span(span_exporter)
    assert (attr(span, "workflow.id"), attr(span, "workflow.total_steps")) == (
        "provision_srv-0042",
        23,
    )


def test_ipmi_check_retried_once_then_succeeds(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """With ipmi_retry the reachability check has attempt 1 retrying and attempt 2 completed."""
    run_plan(dataclasses.replace(PLAN, ipmi_retry=True), tracer_provider)
    assert attempts_of(span_exporter, "verify_ipmi_reachable") == [
        (16, 1, "retrying"),
        (16, 2, "completed"),
    ]
    assert attr(run_span(span_exporter), "workflow.steps_completed") == 23


def test_firmware_update_skipped_for_baseline_device_type(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """A device type already on baseline firmware skips update_firmware with a reason."""
    run_plan(dataclasses.replace(PLAN, device_type="a1_c5_large"), tracer_provider)
    (span,) = [s for s in step_spans(span_exporter) if s.name == "update_firmware"]
    assert attr(span, "workflow.step.status") == "skipped"
    assert "baseline firmware" in attr(span, "workflow.step.message")


def test_commissioning_timeout_propagates_and_stops_the_run(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """A commissioning timeout leaves the with block as TimeoutError after step 4."""
    with pytest.raises(TimeoutError, match="still 'Commissioning'"):
        run_plan(dataclasses.replace(PLAN, failure="commissioning_timeout"), tracer_provider)
    assert [s.name for s in step_spans(span_exporter)][-1] == "wait_for_commissioning"
    span = run_span(span_exporter)
    assert (span.status.status_code, attr(span, "workflow.status")) == (
        StatusCode.ERROR,
        "failed",
    )


def test_unreachable_ipmi_fails_on_the_second_attempt(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """An unreachable BMC raises ConnectionError naming the address, after one retry."""
    plan = dataclasses.replace(PLAN, failure="ipmi_unreachable", ipmi_retry=True)
    with pytest.raises(ConnectionError, match=r"IPMI address 10\.30\.4\.17 unreachable"):
        run_plan(plan, tracer_provider)
    assert attempts_of(span_exporter, "verify_ipmi_reachable") == [
        (16, 1, "retrying"),
        (16, 2, "failed"),
    ]


def test_bios_mismatch_raises_bios_verification_error(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """A BIOS setting that does not verify raises BiosVerificationError on its step."""
    with pytest.raises(BiosVerificationError) as info:
        run_plan(dataclasses.replace(PLAN, failure="bios_mismatch"), tracer_provider)
    assert (info.value.setting, info.value.expected, info.value.actual) == (
        "SR-IOV Support",
        "Enabled",
        "Disabled",
    )
    failed = [s for s in step_spans(span_exporter) if s.status.status_code == StatusCode.ERROR]
    assert [s.name for s in failed] == ["verify_bios_settings"]


def test_failing_step_logs_a_warning_inside_its_span(
    tracer_provider: TracerProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """The failing step logs a warning on flowtel.demo while its own span is current."""
    seen: list[str] = []

    class SpanName(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(getattr(trace.get_current_span(), "name", "?"))

    handler = SpanName(level=logging.WARNING)
    logging.getLogger("flowtel.demo").addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="flowtel.demo"), pytest.raises(TimeoutError):
            run_plan(dataclasses.replace(PLAN, failure="commissioning_timeout"), tracer_provider)
    finally:
        logging.getLogger("flowtel.demo").removeHandler(handler)
    assert seen == ["wait_for_commissioning"]
    assert "srv-0042" in caplog.records[0].getMessage()


def test_plans_are_seeded() -> None:
    """The same seed plans the same runs; another seed plans different ones."""
    assert plan_runs(40, seed=3, failure_rate=0.3) == plan_runs(40, seed=3, failure_rate=0.3)
    assert plan_runs(40, seed=3, failure_rate=0.3) != plan_runs(40, seed=4, failure_rate=0.3)


def test_planning_never_touches_the_global_random() -> None:
    """plan_runs neither reads nor advances the global random generator."""
    random.seed(1)
    first = plan_runs(20, seed=7, failure_rate=0.5)
    state = random.getstate()
    random.seed(2)
    second = plan_runs(20, seed=7, failure_rate=0.5)
    random.seed(1)
    plan_runs(20, seed=7, failure_rate=0.5)
    assert (first, random.getstate()) == (second, state)


def test_failure_rate_bounds_are_honoured() -> None:
    """failure_rate 0 plans no failures and 1 plans only failures."""
    assert {p.failure for p in plan_runs(30, seed=1, failure_rate=0.0)} == {None}
    assert None not in {p.failure for p in plan_runs(30, seed=1, failure_rate=1.0)}


def test_failed_servers_are_sometimes_reprovisioned() -> None:
    """Some workflow ids recur, so a logical id can have several runs."""
    counts = Counter(p.workflow_id for p in plan_runs(40, seed=7, failure_rate=0.5))
    assert max(counts.values()) > 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runs": -1}, "runs must be zero or more"),
        ({"failure_rate": 1.5}, "failure_rate must be between 0 and 1"),
        ({"step_delay": -0.1}, "step_delay must be zero or more"),
    ],
)
def test_run_demo_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    """Out-of-range arguments raise ValueError saying which one."""
    with pytest.raises(ValueError, match=message):
        run_demo(**{"runs": 1, "step_delay": 0, **kwargs})


def outcome_key(outcome: RunOutcome) -> tuple[object, ...]:
    """An outcome without its random run id."""
    return (outcome.index, outcome.workflow_id, outcome.status, outcome.failed_step)


def test_same_seed_gives_same_outcome_sequence(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """Two demos with one seed end the same runs the same way, at the same steps."""
    first: list[RunOutcome] = []
    second: list[RunOutcome] = []
    run_demo(20, 11, 0.4, 0, first.append, tracer_provider=tracer_provider)
    run_demo(20, 11, 0.4, 0, second.append, tracer_provider=tracer_provider)
    assert [outcome_key(o) for o in first] == [outcome_key(o) for o in second]
    assert {o.status for o in first} == {"completed", "failed"}


def test_summary_counts_failures_by_reason(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """The summary's totals and per-reason counts match the outcomes reported."""
    outcomes: list[RunOutcome] = []
    summary = run_demo(30, 5, 0.5, 0, outcomes.append, tracer_provider=tracer_provider)
    failed = [o for o in outcomes if o.status == "failed"]
    assert (summary.runs, summary.completed, summary.failed) == (30, 30 - len(failed), len(failed))
    assert summary.failures == dict(Counter(o.error_type for o in failed))
    assert summary.failed_run_ids == [o.run_id for o in failed]
    assert set(summary.failures) <= {"TimeoutError", "ConnectionError", "BiosVerificationError"}


def test_completed_demo_runs_record_every_step(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """Each completed run's spans cover all 23 step indexes, plus one span per retry."""
    outcomes: list[RunOutcome] = []
    run_demo(10, 7, 0.0, 0, outcomes.append, tracer_provider=tracer_provider)
    by_run: dict[str, list[ReadableSpan]] = {}
    for span in step_spans(span_exporter):
        by_run.setdefault(attr(span, "workflow.run_id"), []).append(span)
    for outcome in outcomes:
        spans = by_run[outcome.run_id]
        retries = sum(attr(s, "workflow.step.status") == "retrying" for s in spans)
        indexes = {attr(s, "workflow.step.index") for s in spans}
        assert (indexes, len(spans)) == (set(range(1, 24)), 23 + retries)


def test_failed_outcome_names_the_failing_step(
    span_exporter: InMemorySpanExporter, tracer_provider: TracerProvider
) -> None:
    """A failed outcome carries the run id, failing step and exception type."""
    outcomes: list[RunOutcome] = []
    run_demo(6, 2, 1.0, 0, outcomes.append, tracer_provider=tracer_provider)
    expected_step = {
        "TimeoutError": "wait_for_commissioning",
        "ConnectionError": "verify_ipmi_reachable",
        "BiosVerificationError": "verify_bios_settings",
    }
    assert [o.failed_step for o in outcomes] == [expected_step[str(o.error_type)] for o in outcomes]
    run_ids = {attr(s, "workflow.run_id") for s in span_exporter.get_finished_spans()}
    assert {o.run_id for o in outcomes} <= run_ids


def test_progress_is_reported_once_per_run_in_order(tracer_provider: TracerProvider) -> None:
    """on_progress is called once per run with indexes 1..N."""
    outcomes: list[RunOutcome] = []
    run_demo(5, 7, 0.15, 0, outcomes.append, tracer_provider=tracer_provider)
    assert [o.index for o in outcomes] == [1, 2, 3, 4, 5]
