"""Tests of the class-based engine: ``Workflow``, ``Step``, ``StepResult`` and their spans."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from instrumentation import attributes as attr
from instrumentation.attributes import RunStatus
from instrumentation.engine import (
    CLEANUP_ERROR_EVENT,
    ResultStatus,
    Step,
    StepContext,
    StepExecutionResult,
    StepResult,
    Workflow,
    WorkflowResult,
)

Outcome = StepResult | BaseException
Execute = Callable[[Workflow, StepContext], WorkflowResult]


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture(params=["run", "arun"])
def execute(request: pytest.FixtureRequest) -> Execute:
    """Run a workflow with ``run`` or, under ``asyncio.run``, with ``arun``."""
    if request.param == "run":
        return lambda wf, context: wf.run(context)
    return lambda wf, context: asyncio.run(wf.arun(context))


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record (instead of doing) the engine's sleeps between attempts, sync and async."""
    recorded: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr("time.sleep", recorded.append)
    monkeypatch.setattr("asyncio.sleep", fake_async_sleep)
    return recorded


class Scripted(Step):
    """Returns (or raises) its outcomes in turn; the last one repeats."""

    def __init__(self, name: str, *outcomes: Outcome, **policy: Any) -> None:
        super().__init__(name, **policy)
        self.outcomes: list[Outcome] = list(outcomes) or [StepResult.success()]
        self.calls = 0

    def execute(self, context: StepContext) -> StepResult:
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class Recorded(Workflow):
    """A workflow that records each cleanup call and the span current during it."""

    def __init__(self, steps: list[Step], provider: TracerProvider, **options: Any) -> None:
        super().__init__(
            "provision_server", "Provision one server", steps, tracer_provider=provider, **options
        )
        self.cleanups: list[trace.Span] = []

    def cleanup(self, context: StepContext) -> None:
        self.cleanups.append(trace.get_current_span())


def run_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = [s for s in exporter.get_finished_spans() if attr.STEP_NAME not in (s.attributes or {})]
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def step_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    spans = [s for s in exporter.get_finished_spans() if attr.STEP_NAME in (s.attributes or {})]
    return sorted(spans, key=lambda s: s.start_time or 0)


def attempts(exporter: InMemorySpanExporter) -> list[tuple[str, int, int, str]]:
    """``(name, index, attempt, status)`` of every step span, in start order."""
    result = []
    for span in step_spans(exporter):
        a = span.attributes or {}
        index, attempt, status = a[attr.STEP_INDEX], a[attr.STEP_ATTEMPT], a[attr.STEP_STATUS]
        assert isinstance(index, int) and isinstance(attempt, int) and isinstance(status, str)
        result.append((span.name, index, attempt, status))
    return result


def run_attr(exporter: InMemorySpanExporter, key: str) -> Any:
    return (run_span(exporter).attributes or {})[key]


# --- ordered steps and the span shape -------------------------------------------------------


def test_ordered_steps_make_one_run_span_with_child_step_spans(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """Three steps give one run span and three child spans with index, attempt and status."""
    wf = Recorded([Scripted("select"), Scripted("commission"), Scripted("validate")], provider)

    result = execute(wf, StepContext(server_id="srv-1"))

    root = run_span(exporter)
    assert root.name == "provision_server"
    assert root.parent is None
    assert root.status.status_code is StatusCode.UNSET
    assert (root.attributes or {})[attr.RUN_STATUS] == "completed"
    assert (root.attributes or {})[attr.RUN_TOTAL_STEPS] == 3
    assert (root.attributes or {})[attr.RUN_DECLARED_STEPS] == ("select", "commission", "validate")
    assert (root.attributes or {})[attr.RUN_DESCRIPTION] == "Provision one server"
    assert (root.attributes or {})["workflow.context.server_id"] == "srv-1"
    assert attempts(exporter) == [
        ("select", 1, 1, "completed"),
        ("commission", 2, 1, "completed"),
        ("validate", 3, 1, "completed"),
    ]
    for span in step_spans(exporter):
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert (span.attributes or {})[attr.RUN_ID] == result.run_id
    assert result.status is RunStatus.COMPLETED


def test_step_description_comes_from_the_subclass_docstring(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A Step subclass without a description uses its docstring's first line."""

    class Commission(Step):
        """Commission the machine.

        More detail that stays out of the span.
        """

        def execute(self, context: StepContext) -> StepResult:
            return StepResult.success()

    Workflow("w", steps=[Commission()], tracer_provider=provider).run(StepContext())

    (span,) = step_spans(exporter)
    assert span.name == "Commission"
    assert (span.attributes or {})[attr.STEP_DESCRIPTION] == "Commission the machine."


def test_code_inside_a_step_sees_the_step_span_as_current(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A span a step starts is a child of that step's span."""
    tracer = provider.get_tracer("user")

    def discover(context: StepContext) -> StepResult:
        with tracer.start_as_current_span("ipmi_query"):
            pass
        return StepResult.success()

    execute(Recorded([Step.from_function(discover)], provider), StepContext())

    (user,) = [s for s in exporter.get_finished_spans() if s.name == "ipmi_query"]
    (step,) = step_spans(exporter)
    assert user.parent is not None
    assert user.parent.span_id == step.context.span_id


# --- the four results ------------------------------------------------------------------------


def test_success_sets_the_message_and_merges_data(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """success(message, data=...) completes the step, sets its message and merges the data."""
    context = StepContext(data={"kept": True})
    steps: list[Step] = [
        Scripted("select", StepResult.success("chose srv-9", data={"ip": "10.0.0.9"}))
    ]

    result = execute(Recorded(steps, provider), context)

    assert (step_spans(exporter)[0].attributes or {})[attr.STEP_MESSAGE] == "chose srv-9"
    assert context.data == {"kept": True, "ip": "10.0.0.9"}
    assert result.data == {"kept": True, "ip": "10.0.0.9"}


def test_failure_stops_the_run(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """failure() fails the step and the run; later steps never start."""
    context = StepContext()
    steps: list[Step] = [
        Scripted("a"),
        Scripted("b", StepResult.failure("switch port down")),
        Scripted("c"),
    ]
    wf = Recorded(steps, provider)

    result = execute(wf, context)

    assert attempts(exporter) == [("a", 1, 1, "completed"), ("b", 2, 1, "failed")]
    root = run_span(exporter)
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "step 'b' failed: switch port down"
    assert (root.attributes or {})[attr.RUN_STATUS] == "failed"
    assert step_spans(exporter)[1].status.status_code is StatusCode.ERROR
    assert context.errors == ["switch port down"]
    assert (result.status, result.failed_step, result.steps_completed) == (
        RunStatus.FAILED,
        "b",
        1,
    )
    assert len(wf.cleanups) == 1


def test_failure_with_should_continue_goes_on(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """failure(should_continue=True) fails the step, records the error, and the run completes."""
    steps: list[Step] = [
        Scripted("a"),
        Scripted("b", StepResult.failure("optional BIOS push failed", should_continue=True)),
        Scripted("c"),
    ]

    result = execute(Recorded(steps, provider), StepContext())

    assert attempts(exporter) == [
        ("a", 1, 1, "completed"),
        ("b", 2, 1, "failed"),
        ("c", 3, 1, "completed"),
    ]
    assert result.status is RunStatus.COMPLETED
    assert result.errors == ["optional BIOS push failed"]
    assert result.failed_step is None
    assert result.steps_completed == 2
    assert run_attr(exporter, attr.RUN_STATUS) == "completed"


def test_failure_with_should_continue_and_next_step_jumps(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A continuing failure with next_step goes to that step."""
    steps: list[Step] = [
        Scripted("a", StepResult.failure("no lldp", should_continue=True, next_step="c")),
        Scripted("b"),
        Scripted("c"),
    ]

    execute(Recorded(steps, provider), StepContext())

    assert attempts(exporter) == [("a", 1, 1, "failed"), ("c", 3, 1, "completed")]


def test_skip_counts_toward_progress(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """skip(message) ends the step as skipped and counts it as done."""
    steps: list[Step] = [
        Scripted("a"),
        Scripted("b", StepResult.skip("already set")),
        Scripted("c"),
    ]

    result = execute(Recorded(steps, provider), StepContext())

    skipped = step_spans(exporter)[1]
    assert (skipped.attributes or {})[attr.STEP_STATUS] == "skipped"
    assert (skipped.attributes or {})[attr.STEP_MESSAGE] == "already set"
    assert result.steps_completed == 3
    assert run_attr(exporter, attr.RUN_STEPS_COMPLETED) == 3


# --- retries ---------------------------------------------------------------------------------


def test_retry_runs_each_attempt_in_its_own_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute, sleeps: list[float]
) -> None:
    """retry(delay=...) ends the attempt retrying, sleeps the delay and tries again."""
    flaky = Scripted(
        "wait_for_commissioning",
        StepResult.retry("still commissioning", delay=0.5),
        StepResult.retry("still commissioning", delay=0.75),
        StepResult.success("ready"),
        max_retries=3,
    )

    result = execute(Recorded([Scripted("a"), flaky], provider), StepContext())

    assert attempts(exporter) == [
        ("a", 1, 1, "completed"),
        ("wait_for_commissioning", 2, 1, "retrying"),
        ("wait_for_commissioning", 2, 2, "retrying"),
        ("wait_for_commissioning", 2, 3, "completed"),
    ]
    first = step_spans(exporter)[1]
    assert (first.attributes or {})[attr.STEP_MESSAGE] == "still commissioning"
    assert first.status.status_code is StatusCode.ERROR
    assert sleeps == [0.5, 0.75]
    assert result.status is RunStatus.COMPLETED
    assert result.steps_completed == 2


@pytest.mark.parametrize(("delay", "expected"), [(None, 2.0), (0.1, 0.1)])
def test_retry_delay_defaults_to_the_steps_retry_delay(
    provider: TracerProvider, delay: float | None, expected: float, sleeps: list[float]
) -> None:
    """A retry without a delay waits the step's retry_delay; with one, that delay."""
    step = Scripted(
        "a",
        StepResult.retry("later", delay=delay),
        StepResult.success(),
        max_retries=1,
        retry_delay=2.0,
    )

    Recorded([step], provider).run(StepContext())

    assert sleeps == [expected]


def test_retries_exhausted_fail_the_step_and_the_run(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute, sleeps: list[float]
) -> None:
    """When retries run out the last attempt fails and the run stops."""
    steps: list[Step] = [Scripted("a", StepResult.retry("not ready"), max_retries=2), Scripted("b")]

    result = execute(Recorded(steps, provider), StepContext())

    assert attempts(exporter) == [
        ("a", 1, 1, "retrying"),
        ("a", 1, 2, "retrying"),
        ("a", 1, 3, "failed"),
    ]
    message = "retries exhausted after 3 attempts: not ready"
    assert (step_spans(exporter)[2].attributes or {})[attr.STEP_MESSAGE] == message
    assert result.status is RunStatus.FAILED
    assert result.errors == [message]
    assert result.error_message == f"step 'a' failed: {message}"
    assert sleeps == []  # retry_delay 0: no sleep at all


def test_retry_budget_is_per_visit_and_attempts_count_on(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A step re-entered by next_step gets max_retries afresh; its attempt numbers go on."""
    again = StepResult.retry("again")
    steps: list[Step] = [
        Scripted("a", again, StepResult.success(), again, again, max_retries=1),
        Scripted("b", StepResult.success(next_step="a")),
    ]

    result = Recorded(steps, provider).run(StepContext())

    assert attempts(exporter) == [
        ("a", 1, 1, "retrying"),
        ("a", 1, 2, "completed"),
        ("b", 2, 1, "completed"),
        ("a", 1, 3, "retrying"),
        ("a", 1, 4, "failed"),
    ]
    assert result.errors == ["retries exhausted after 2 attempts: again"]


def test_retry_without_max_retries_fails_at_once(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A retry result from a step with max_retries=0 fails it, saying why."""
    steps: list[Step] = [Scripted("a", StepResult.retry("not ready"))]

    result = execute(Recorded(steps, provider), StepContext())

    assert attempts(exporter) == [("a", 1, 1, "failed")]
    assert result.errors == ["retry requested but max_retries is 0: not ready"]
    assert result.status is RunStatus.FAILED


def test_exception_is_retried_while_retries_remain(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute, sleeps: list[float]
) -> None:
    """An exception with retries left ends the attempt retrying, recorded, then retries."""
    steps: list[Step] = [
        Scripted(
            "a", ConnectionError("bmc busy"), StepResult.success(), max_retries=1, retry_delay=0.25
        )
    ]

    result = execute(Recorded(steps, provider), StepContext())

    assert attempts(exporter) == [("a", 1, 1, "retrying"), ("a", 1, 2, "completed")]
    retried = step_spans(exporter)[0]
    assert (retried.attributes or {})[attr.ERROR_TYPE] == "ConnectionError"
    assert [e.name for e in retried.events] == ["exception"]
    assert (retried.attributes or {})[attr.STEP_MESSAGE] == "ConnectionError: bmc busy"
    assert sleeps == [0.25]
    assert result.status is RunStatus.COMPLETED
    assert result.errors == []


def test_exception_after_the_last_retry_propagates(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """The exception of the last attempt leaves run()/arun() as the same object."""
    last = ConnectionError("third")
    steps: list[Step] = [
        Scripted("a", ConnectionError("first"), ConnectionError("second"), last, max_retries=2)
    ]

    with pytest.raises(ConnectionError) as info:
        execute(Recorded(steps, provider), StepContext())

    assert info.value is last
    assert attempts(exporter) == [
        ("a", 1, 1, "retrying"),
        ("a", 1, 2, "retrying"),
        ("a", 1, 3, "failed"),
    ]
    assert run_attr(exporter, attr.RUN_STATUS) == "failed"


# --- next_step -------------------------------------------------------------------------------


def test_next_step_jumps_forward(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """success(next_step=...) skips the steps in between; they never start."""
    steps: list[Step] = [
        Scripted("a", StepResult.success(next_step="d")),
        Scripted("b"),
        Scripted("c"),
        Scripted("d"),
    ]

    result = execute(Recorded(steps, provider), StepContext())

    assert attempts(exporter) == [("a", 1, 1, "completed"), ("d", 4, 1, "completed")]
    assert (result.status, result.steps_completed, result.total_steps) == (
        RunStatus.COMPLETED,
        2,
        4,
    )


def test_next_step_jumps_backward(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A backward jump re-runs steps; attempts count on per index, progress does not."""
    steps: list[Step] = [
        Scripted("a"),
        Scripted("b", StepResult.success(next_step="a"), StepResult.success()),
        Scripted("c"),
    ]

    result = execute(Recorded(steps, provider), StepContext())

    assert attempts(exporter) == [
        ("a", 1, 1, "completed"),
        ("b", 2, 1, "completed"),
        ("a", 1, 2, "completed"),
        ("b", 2, 2, "completed"),
        ("c", 3, 1, "completed"),
    ]
    assert result.steps_completed == 3


def test_next_step_goes_to_the_first_step_of_that_name(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With two steps of one name, next_step jumps to the first of them."""
    steps: list[Step] = [
        Scripted("wait"),
        Scripted("x", StepResult.success(next_step="wait"), StepResult.success()),
        Scripted("wait"),
    ]

    Recorded(steps, provider).run(StepContext())

    assert attempts(exporter) == [
        ("wait", 1, 1, "completed"),
        ("x", 2, 1, "completed"),
        ("wait", 1, 2, "completed"),
        ("x", 2, 2, "completed"),
        ("wait", 3, 1, "completed"),
    ]


def test_unknown_next_step_raises_value_error_naming_the_steps(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """An unknown next_step raises ValueError listing the known step names."""
    steps: list[Step] = [
        Scripted("a", StepResult.success(next_step="configure_nic")),
        Scripted("b"),
    ]
    wf = Recorded(steps, provider)

    with pytest.raises(ValueError, match=r"next_step='configure_nic'.*known steps: a, b"):
        execute(wf, StepContext())

    assert attempts(exporter) == [("a", 1, 1, "failed")]
    assert run_attr(exporter, attr.RUN_STATUS) == "failed"
    assert len(wf.cleanups) == 1


def test_next_step_loop_is_stopped(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A step that always jumps back is cut off at max_step_executions and fails the run."""
    steps: list[Step] = [Scripted("a"), Scripted("b", StepResult.success(next_step="a"))]

    result = execute(Recorded(steps, provider, max_step_executions=5), StepContext())

    assert len(step_spans(exporter)) == 5
    assert result.status is RunStatus.FAILED
    assert result.error_message is not None
    assert "max_step_executions=5" in result.error_message
    assert run_span(exporter).status.description == result.error_message


def test_default_loop_limit_is_ten_passes_plus_retries(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Without max_step_executions the cap is 10 * len(steps) + the steps' max_retries."""
    steps: list[Step] = [
        Scripted("a", max_retries=3),
        Scripted("b", StepResult.success(next_step="a")),
    ]

    result = Recorded(steps, provider).run(StepContext())

    assert len(step_spans(exporter)) == 10 * 2 + 3
    assert result.status is RunStatus.FAILED


# --- prerequisites ---------------------------------------------------------------------------


def test_workflow_prerequisites_false_runs_no_step(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A workflow whose prerequisites fail runs no step, fails, and still cleans up."""

    class NeedsIpmi(Recorded):
        def validate_prerequisites(self, context: StepContext) -> bool:
            if context.ipmi_ip is None:
                context.errors.append("no IPMI address")
                return False
            return True

    step = Scripted("a")
    wf = NeedsIpmi([step], provider)

    result = execute(wf, StepContext(server_id="srv-1"))

    assert step.calls == 0
    assert step_spans(exporter) == []
    assert result.status is RunStatus.FAILED
    assert result.errors == ["no IPMI address"]
    assert run_span(exporter).status.description == "prerequisites not met: no IPMI address"
    assert len(wf.cleanups) == 1


def test_workflow_prerequisites_false_without_reason_says_so(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With no error appended, the run's message names the class's validate_prerequisites()."""

    class Never(Recorded):
        def validate_prerequisites(self, context: StepContext) -> bool:
            return False

    result = Never([Scripted("a")], provider).run(StepContext())

    message = "prerequisites not met: Never.validate_prerequisites() is false"
    assert result.errors == [message]
    assert run_span(exporter).status.description == message


def test_step_prerequisites_false_fails_the_step_and_the_run(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A step whose prerequisites fail is failed without executing, and the run stops."""

    class NotReady(Scripted):
        def validate_prerequisites(self, context: StepContext) -> bool:
            return False

    blocked = NotReady("b")
    steps: list[Step] = [Scripted("a"), blocked, Scripted("c")]

    result = execute(Recorded(steps, provider), StepContext())

    assert blocked.calls == 0
    assert attempts(exporter) == [("a", 1, 1, "completed"), ("b", 2, 1, "failed")]
    assert (step_spans(exporter)[1].attributes or {})[attr.STEP_MESSAGE] == "prerequisites not met"
    assert result.failed_step == "b"
    assert run_span(exporter).status.description == "step 'b' failed: prerequisites not met"


# --- cleanup ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [StepResult.success(), StepResult.failure("nope"), RuntimeError("boom")],
    ids=["success", "failure", "exception"],
)
def test_cleanup_always_runs_inside_the_run_span(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    execute: Execute,
    outcome: Outcome,
) -> None:
    """cleanup runs exactly once, with the run span current, however the run ends."""
    wf = Recorded([Scripted("a", outcome)], provider)

    with contextlib.suppress(RuntimeError):
        execute(wf, StepContext())

    assert len(wf.cleanups) == 1
    assert wf.cleanups[0].get_span_context().span_id == run_span(exporter).context.span_id


def test_cleanup_error_does_not_mask_the_original_exception(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """With a step exception in flight, cleanup's error becomes a run-span event only."""

    class BrokenCleanup(Recorded):
        def cleanup(self, context: StepContext) -> None:
            raise OSError("cannot release the lease")

    original = RuntimeError("boom")

    with pytest.raises(RuntimeError) as info:
        execute(BrokenCleanup([Scripted("a", original)], provider), StepContext())

    assert info.value is original
    root = run_span(exporter)
    (event,) = [e for e in root.events if e.name == CLEANUP_ERROR_EVENT]
    assert (event.attributes or {})["exception.type"] == "OSError"
    assert (event.attributes or {})["exception.message"] == "cannot release the lease"
    assert (root.attributes or {})[attr.ERROR_TYPE] == "RuntimeError"


def test_cleanup_error_propagates_when_nothing_else_was_raised(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """Without another exception, cleanup's error propagates and fails the run."""
    broken = OSError("cannot release the lease")

    class BrokenCleanup(Recorded):
        def cleanup(self, context: StepContext) -> None:
            raise broken

    with pytest.raises(OSError) as info:
        execute(BrokenCleanup([Scripted("a")], provider), StepContext())

    assert info.value is broken
    root = run_span(exporter)
    assert (root.attributes or {})[attr.RUN_STATUS] == "failed"
    assert (root.attributes or {})[attr.ERROR_TYPE] == "OSError"
    assert [e.name for e in root.events] == ["exception"]


# --- exceptions and cancellation -------------------------------------------------------------


def test_exception_propagates_as_the_same_object(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A step's exception leaves unchanged; the run span has ERROR, error.type, an event."""
    error = RuntimeError("disk not found")
    context = StepContext()
    steps: list[Step] = [Scripted("a"), Scripted("b", error), Scripted("c")]
    wf = Recorded(steps, provider, max_step_executions=99)

    with pytest.raises(RuntimeError) as info:
        execute(wf, context)

    assert info.value is error
    root = run_span(exporter)
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "step 'b' failed: RuntimeError: disk not found"
    assert (root.attributes or {})[attr.ERROR_TYPE] == "RuntimeError"
    assert (root.attributes or {})[attr.RUN_STATUS] == "failed"
    assert (root.attributes or {})[attr.RUN_STEPS_COMPLETED] == 1
    (event,) = root.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "disk not found"
    assert attempts(exporter) == [("a", 1, 1, "completed"), ("b", 2, 1, "failed")]
    assert context.errors == ["RuntimeError: disk not found"]
    assert len(wf.cleanups) == 1


def test_keyboard_interrupt_cancels_the_run(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """KeyboardInterrupt propagates after cleanup and marks the run cancelled."""
    interrupt = KeyboardInterrupt()
    wf = Recorded([Scripted("a", interrupt, max_retries=3), Scripted("b")], provider)

    with pytest.raises(KeyboardInterrupt) as info:
        execute(wf, StepContext())

    assert info.value is interrupt
    assert run_attr(exporter, attr.RUN_STATUS) == "cancelled"
    assert len(step_spans(exporter)) == 1  # cancellation is never retried
    assert len(wf.cleanups) == 1


def test_task_cancellation_cancels_the_run_after_async_cleanup(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Cancelling the arun() task marks the run cancelled once async cleanup has finished."""
    cleaned: list[str] = []

    class Hangs(Step):
        async def execute(self, context: StepContext) -> StepResult:
            context.data["started"] = True
            await asyncio.sleep(3600)
            return StepResult.success()

    class AsyncCleanup(Workflow):
        async def cleanup(self, context: StepContext) -> None:
            await asyncio.sleep(0)
            cleaned.append("done")

    async def main() -> None:
        context = StepContext()
        task = asyncio.create_task(
            AsyncCleanup("w", steps=[Hangs("hang")], tracer_provider=provider).arun(context)
        )
        while not context.data:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())

    assert cleaned == ["done"]
    assert run_attr(exporter, attr.RUN_STATUS) == "cancelled"


# --- async ---------------------------------------------------------------------------------


def test_async_steps_run_under_arun(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """arun awaits async execute, prerequisites, function steps and cleanup, in order."""
    seen: list[object] = []

    class Discover(Step):
        async def validate_prerequisites(self, context: StepContext) -> bool:
            await asyncio.sleep(0)
            return True

        async def execute(self, context: StepContext) -> StepResult:
            await asyncio.sleep(0)
            seen.append(trace.get_current_span().get_span_context().span_id)
            return StepResult.success(data={"cpus": 64})

    async def configure_ipmi(context: StepContext) -> StepResult:
        """Configure the BMC."""
        await asyncio.sleep(0)
        return StepResult.success("bmc ok")

    class Provision(Workflow):
        async def cleanup(self, context: StepContext) -> None:
            await asyncio.sleep(0)
            seen.append("cleanup")

    wf = Provision(
        "provision_server",
        steps=[Scripted("select"), Discover("discover"), Step.from_function(configure_ipmi)],
        tracer_provider=provider,
    )
    context = StepContext()

    result = asyncio.run(wf.arun(context))

    assert attempts(exporter) == [
        ("select", 1, 1, "completed"),
        ("discover", 2, 1, "completed"),
        ("configure_ipmi", 3, 1, "completed"),
    ]
    assert (step_spans(exporter)[2].attributes or {})[attr.STEP_DESCRIPTION] == "Configure the BMC."
    assert seen == [step_spans(exporter)[1].context.span_id, "cleanup"]
    assert result.data == {"cpus": 64}
    assert result.status is RunStatus.COMPLETED


def _async_execute_step() -> Step:
    class AsyncStep(Step):
        async def execute(self, context: StepContext) -> StepResult:
            return StepResult.success()

    return AsyncStep("discover")


def _async_prerequisites_step() -> Step:
    class AsyncCheck(Scripted):
        async def validate_prerequisites(self, context: StepContext) -> bool:
            return True

    return AsyncCheck("discover")


def _async_function_step() -> Step:
    async def discover(context: StepContext) -> StepResult:
        return StepResult.success()

    return Step.from_function(discover)


class _AsyncCleanupWorkflow(Workflow):
    async def cleanup(self, context: StepContext) -> None:
        return None


class _AsyncPrerequisitesWorkflow(Workflow):
    async def validate_prerequisites(self, context: StepContext) -> bool:
        return True


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (
            lambda p: Workflow("w", steps=[_async_execute_step()], tracer_provider=p),
            "step 'discover' execute()",
        ),
        (
            lambda p: Workflow("w", steps=[_async_prerequisites_step()], tracer_provider=p),
            "step 'discover' validate_prerequisites()",
        ),
        (
            lambda p: Workflow("w", steps=[_async_function_step()], tracer_provider=p),
            "step 'discover' execute()",
        ),
        (
            lambda p: _AsyncCleanupWorkflow("w", steps=[Scripted("a")], tracer_provider=p),
            "cleanup()",
        ),
        (
            lambda p: _AsyncPrerequisitesWorkflow("w", steps=[Scripted("a")], tracer_provider=p),
            "validate_prerequisites()",
        ),
    ],
    ids=["execute", "step-prerequisites", "function", "cleanup", "prerequisites"],
)
def test_run_with_async_code_raises_type_error_pointing_to_arun(
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    make: Callable[[TracerProvider], Workflow],
    what: str,
) -> None:
    """run() refuses async steps, prerequisites and cleanup before starting, naming arun."""
    with pytest.raises(TypeError, match=r"arun\(context\)") as info:
        make(provider).run(StepContext())

    assert f"workflow 'w': {what} is async" in str(info.value)
    assert exporter.get_finished_spans() == ()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_run_with_a_sync_function_returning_a_coroutine_fails_without_retry(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A sync callable that returns a coroutine under run() fails once, never retried."""

    async def later(context: StepContext) -> StepResult:
        return StepResult.success()

    def sneaky(context: StepContext) -> Any:
        return later(context)

    wf = Workflow("w", steps=[Step.from_function(sneaky, max_retries=3)], tracer_provider=provider)

    with pytest.raises(TypeError, match=r"arun"):
        wf.run(StepContext())

    assert attempts(exporter) == [("sneaky", 1, 1, "failed")]


# --- results, context and construction -------------------------------------------------------


def test_workflow_result_fields(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """WorkflowResult carries the run's ids, status, progress, errors and data."""
    steps: list[Step] = [
        Scripted("a", StepResult.success(data={"rack": "r4"})),
        Scripted("b", StepResult.failure("bad cable", should_continue=True)),
        Scripted("c", StepResult.skip()),
    ]

    result = execute(Recorded(steps, provider), StepContext(workflow_id="provision_srv-1"))

    root = run_span(exporter)
    assert result.run_id == (root.attributes or {})[attr.RUN_ID]
    assert result.trace_id == f"{root.context.trace_id:032x}"
    assert result.workflow_id == "provision_srv-1" == (root.attributes or {})[attr.RUN_WORKFLOW_ID]
    assert result.workflow_name == "provision_server"
    assert result.status is RunStatus.COMPLETED
    assert result.success is True
    assert (result.steps_completed, result.total_steps) == (2, 3)
    assert result.errors == ["bad cable"]
    assert result.failed_step is None
    assert result.data == {"rack": "r4"}
    assert result.error_message is None


def test_failed_workflow_result(provider: TracerProvider) -> None:
    """A failed run's result has success False, the failed step and the run's message."""
    steps: list[Step] = [Scripted("a"), Scripted("b", StepResult.failure("boom"))]

    result = Recorded(steps, provider).run(StepContext())

    assert result.success is False
    assert result.failed_step == "b"
    assert result.error_message == "step 'b' failed: boom"


def test_workflow_id_defaults_to_the_name_and_run_ids_are_unique(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Without a workflow_id the name is used; each run gets a new run_id."""
    wf = Recorded([Scripted("a")], provider)

    first, second = wf.run(StepContext()), wf.run(StepContext())

    assert first.workflow_id == second.workflow_id == "provision_server"
    assert first.run_id != second.run_id


def test_steps_completed_attribute_on_the_run_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """workflow.steps_completed counts completed and skipped steps, not failed ones."""
    steps: list[Step] = [
        Scripted("a"),
        Scripted("b", StepResult.skip()),
        Scripted("c", StepResult.failure("x", should_continue=True)),
        Scripted("d"),
        Scripted("e", StepResult.failure("stop")),
    ]

    execute(Recorded(steps, provider), StepContext())

    assert run_attr(exporter, attr.RUN_STEPS_COMPLETED) == 3


def test_context_fields_a_step_sets_reach_the_run_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, execute: Execute
) -> None:
    """A context field set by a step (the chosen server) is added to the run's context."""

    def select(context: StepContext) -> StepResult:
        context.server_id = "srv-42"
        return StepResult.success()

    execute(Recorded([Step.from_function(select)], provider), StepContext(device_type="r650"))

    assert run_attr(exporter, "workflow.context.server_id") == "srv-42"
    assert run_attr(exporter, "workflow.context.device_type") == "r650"


def test_non_step_result_raises_type_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """execute() returning something else than a StepResult fails with a clear TypeError."""

    def forgot(context: StepContext) -> Any:
        return None

    wf = Workflow("w", steps=[Step.from_function(forgot, max_retries=2)], tracer_provider=provider)

    with pytest.raises(TypeError, match=r"step 'forgot': execute\(\) returned NoneType"):
        wf.run(StepContext())

    assert attempts(exporter) == [("forgot", 1, 1, "failed")]


def test_steps_must_be_step_objects(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A plain function in steps is refused before the run starts, suggesting from_function."""
    wf = Workflow("w", steps=[print], tracer_provider=provider)  # type: ignore[list-item]

    with pytest.raises(TypeError, match=r"Step.from_function"):
        wf.run(StepContext())

    assert exporter.get_finished_spans() == ()


def test_step_context_as_context() -> None:
    """as_context() holds the set named fields and extra, never data or errors."""
    context = StepContext(
        workflow_id="provision_srv-1",
        server_id="srv-1",
        ipmi_ip="10.1.0.5",
        extra={"rack": "r4", "server_id": "ignored"},
        data={"x": 1},
        errors=["e"],
    )

    assert context.as_context() == {
        "rack": "r4",
        "workflow_id": "provision_srv-1",
        "server_id": "srv-1",
        "ipmi_ip": "10.1.0.5",
    }


def test_step_result_constructors() -> None:
    """The constructors set status and fields; StepExecutionResult is the same class."""
    assert StepExecutionResult is StepResult
    ok = StepResult.success("done", data={"a": 1}, next_step="b")
    assert (ok.status, ok.message, ok.data, ok.next_step) == (
        ResultStatus.SUCCESS,
        "done",
        {"a": 1},
        "b",
    )
    failed = StepResult.failure("bad", should_continue=True)
    assert (failed.status, failed.should_continue, failed.next_step) == (
        ResultStatus.FAILURE,
        True,
        None,
    )
    again = StepResult.retry("later", delay=3)
    assert (again.status, again.retry_delay) == (ResultStatus.RETRY, 3.0)
    skipped = StepResult.skip()
    assert (skipped.status, skipped.message, skipped.data) == (ResultStatus.SKIP, "", {})
    with pytest.raises(ValueError, match="delay"):
        StepResult.retry("later", delay=-1)
    with pytest.raises(TypeError, match="message"):
        StepResult.failure(None)  # type: ignore[arg-type]


def test_step_from_function_takes_name_description_and_policy() -> None:
    """from_function names the step after the function and keeps the retry policy."""

    def select_machine(context: StepContext) -> StepResult:
        """Pick a free machine.

        Details.
        """
        return StepResult.success()

    step = Step.from_function(select_machine, max_retries=2, retry_delay=1.5)
    named = Step.from_function(select_machine, "pick", "Pick one")

    assert (step.name, step.description, step.max_retries, step.retry_delay) == (
        "select_machine",
        "Pick a free machine.",
        2,
        1.5,
    )
    assert (named.name, named.description) == ("pick", "Pick one")
    with pytest.raises(ValueError, match="name="):
        Step.from_function(lambda context: StepResult.success())


def test_step_class_attributes_and_constructor_arguments() -> None:
    """Class attributes set the defaults; constructor arguments override them."""

    class Commission(Step):
        name = "commission"
        description = "Commission via MAAS"
        max_retries = 3
        retry_delay = 10.0

    assert (Commission().name, Commission().max_retries, Commission().retry_delay) == (
        "commission",
        3,
        10.0,
    )
    custom = Commission("recommission", max_retries=1, retry_delay=0)
    assert (custom.name, custom.description, custom.max_retries, custom.retry_delay) == (
        "recommission",
        "Commission via MAAS",
        1,
        0.0,
    )
    with pytest.raises(ValueError, match="max_retries"):
        Commission(max_retries=-1)


def test_old_style_subclass_moves_over(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A workflow that sets steps in __init__ and calls execute() works unchanged."""

    class ProvisionWorkflow(Workflow):
        def __init__(self) -> None:
            super().__init__("provision_server", "Provision a server", tracer_provider=provider)
            self.steps = [Scripted("select"), Scripted("commission")]

    result = ProvisionWorkflow().execute(StepContext(server_id="srv-1"))

    assert Workflow.execute is Workflow.run
    assert result.success is True
    assert [s.name for s in step_spans(exporter)] == ["select", "commission"]
    assert run_attr(exporter, attr.RUN_DECLARED_STEPS) == ("select", "commission")


def test_class_attribute_steps_are_copied_per_instance(provider: TracerProvider) -> None:
    """Steps declared on the class are copied, so one instance's changes stay its own."""

    class Provision(Workflow):
        name = "provision_server"
        steps = [Scripted("a")]  # noqa: RUF012

    first, second = Provision(tracer_provider=provider), Provision(tracer_provider=provider)
    first.steps.append(Scripted("b"))

    assert [s.name for s in second.steps] == ["a"]
    assert first.run(StepContext()).total_steps == 2
