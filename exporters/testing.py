"""A pytest plugin for users' own tests: the ``flowtel_history`` fixture, a throwaway history.

Registered through the ``pytest11`` entry point, so installing flowtel makes the fixture
available to every test suite. Each test that asks for it gets a fresh SQLite history in its
``tmp_path`` with a :class:`~exporters.WorkflowHistorySpanProcessor` and an
:class:`~opentelemetry.sdk.trace.export.in_memory_span_exporter.InMemorySpanExporter` plugged
into the global tracer provider (installed on first use if the application has none, with
flowtel's id generator and span limits), and unplugged again afterwards. Code under test
instruments itself as it does in production (``workflow_run``, ``@workflow``, ``Workflow``);
the test then asserts on what was recorded::

    def test_provisioning_fails_at_bios(flowtel_history):
        with pytest.raises(BiosError):
            provision("srv-1")
        flowtel_history.assert_run("provision_server", status="failed",
                                   failed_step="verify_bios_settings")

History is recorded whatever the application's sampler, as ``configure()`` records it: for
the test's duration the provider's sampler (and that of every tracer it already made) is
wrapped in :class:`~exporters.AuditSampler`, and put back afterwards; if that cannot be done,
the fixture fails at set-up saying why. The test's runs go to its throwaway history only: the
history processors the application installed (``configure()`` at import, say) receive no span
while the fixture is active, so its real database gets no run from the test.

Importing this module has no side effect; the provider is touched when the fixture runs.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler

from exporters.db.engine import make_engine
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.query.records import RunDetail, RunSummary
from exporters.query.store import HistoryStore
from exporters.telemetry.forward import HistoryForwarder
from exporters.telemetry.provider import PrivateRandomIdGenerator, span_limits
from exporters.telemetry.sampling import AuditSampler
from instrumentation import __version__
from instrumentation.attributes import INSTRUMENTATION_NAME, RUN_ID

__all__ = ["FlowtelHistory", "flowtel_history"]

_FLUSH_TIMEOUT_MS = 30_000


class _Switchboard(SpanProcessor):
    """Forwards span callbacks to the processors of the test running now."""

    def __init__(self) -> None:
        self.targets: list[SpanProcessor] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for target in list(self.targets):
            target.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for target in list(self.targets):
            target.on_end(span)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(target.force_flush(timeout_millis) for target in list(self.targets))


class _EverySpan(SpanProcessor):
    """Hands every ended span to an exporter, sampled or only recorded (RECORD_ONLY)."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    def on_end(self, span: ReadableSpan) -> None:
        self.exporter.export([span])


_SWITCHBOARD = _Switchboard()
_INSTALLED: weakref.WeakSet[TracerProvider] = weakref.WeakSet()  # the switchboard is in these
_LOCK = threading.Lock()
_APP_HISTORY = (WorkflowHistorySpanProcessor, HistoryForwarder)  # muted during a test


def _audit_sampling(provider: TracerProvider) -> Callable[[], None]:
    """Wrap the sampler of *provider* and of its tracers in an AuditSampler; return the undo.

    Tracers copy the provider's sampler when they are made (the SDK keeps them in
    ``_tracers``), so those made before the test are switched too. Fails the test at set-up if
    workflow spans would still be dropped.
    """
    original: Sampler = provider.sampler
    if isinstance(original, AuditSampler):
        return lambda: None
    audit = AuditSampler(original)
    holders: list[Any] = [provider, *getattr(provider, "_tracers", {}).values()]
    for holder in holders:
        if getattr(holder, "sampler", None) is original:
            with contextlib.suppress(AttributeError):  # a read-only sampler: the probe says
                holder.sampler = audit

    def undo() -> None:
        for holder in [provider, *getattr(provider, "_tracers", {}).values()]:
            if getattr(holder, "sampler", None) is audit:
                holder.sampler = original

    tracer: Any = provider.get_tracer(INSTRUMENTATION_NAME, __version__)
    probe = getattr(tracer, "sampler", provider.sampler).should_sample(
        None, 1, "flowtel-probe", attributes={RUN_ID: "probe"}
    )
    if probe.decision is Decision.DROP:
        undo()
        pytest.fail(
            "flowtel_history cannot record: the application's tracer provider drops workflow "
            f"spans (sampler {original.get_description()}) and flowtel could not wrap it; build "
            "the provider with sampler=exporters.AuditSampler(...), as configure() does",
            pytrace=False,
        )
    return undo


def _mute_app_history(provider: TracerProvider) -> Callable[[], None]:
    """Take the application's own history processors off *provider*; return the undo.

    They stay alive (their writers keep their state) but get no span until the undo puts them
    back where they were, in front of any processor added meanwhile.
    """
    multi: Any = getattr(provider, "_active_span_processor", None)
    current = getattr(multi, "_span_processors", None)
    if not isinstance(current, tuple):
        return lambda: None
    muted = tuple(p for p in current if isinstance(p, _APP_HISTORY))
    if not muted:
        return lambda: None
    with multi._lock:
        multi._span_processors = tuple(p for p in current if p not in muted)

    def undo() -> None:
        with multi._lock:
            added = tuple(p for p in multi._span_processors if p not in current)
            multi._span_processors = current + added

    return undo


def _plugged_provider() -> TracerProvider:
    """The global SDK tracer provider, with the switchboard added once."""
    with _LOCK:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider(
                span_limits=span_limits(),
                id_generator=PrivateRandomIdGenerator(),
                shutdown_on_exit=False,
            )
            trace.set_tracer_provider(provider)
        if provider not in _INSTALLED:
            provider.add_span_processor(_SWITCHBOARD)
            _INSTALLED.add(provider)
        return provider


class FlowtelHistory:
    """A throwaway flowtel history for one test: its database, its spans and assertions.

    Attributes:
        database_url: the SQLite URL of the history (in the test's ``tmp_path``).
        spans: every span the test's workflows ended, as the SDK's in-memory exporter holds
            them (``spans.get_finished_spans()``).
        tracer_provider: the global provider the processors are plugged into.
        processor: the history processor writing to :attr:`database_url`.
        store: the query API over the history (:meth:`runs` and :meth:`run` flush first).
    """

    def __init__(self, database_url: str, tracer_provider: TracerProvider) -> None:
        self.database_url = database_url
        self.tracer_provider = tracer_provider
        self.spans = InMemorySpanExporter()
        self.processor = WorkflowHistorySpanProcessor(make_engine(database_url), spool=False)
        self.store = HistoryStore(make_engine(database_url))
        self._span_processor = _EverySpan(self.spans)
        self._undo: list[Callable[[], None]] = []

    def flush(self) -> None:
        """Write every queued row to the database (fails the test if that cannot be done)."""
        if not self.processor.force_flush(_FLUSH_TIMEOUT_MS):
            pytest.fail(f"flowtel could not write the history: {self.processor.stats}")

    def finished_spans(self) -> Sequence[ReadableSpan]:
        """The spans ended so far, in end order."""
        return self.spans.get_finished_spans()

    def runs(self, **filters: Any) -> list[RunSummary]:
        """The recorded runs, newest first (filters as :meth:`HistoryStore.list_runs`)."""
        self.flush()
        return self.store.list_runs(**filters)

    def run(self, ref: str) -> RunDetail:
        """One run with its steps: a run id, a unique prefix or a workflow id (latest run)."""
        self.flush()
        return self.store.get_run(ref)

    def assert_run(
        self,
        workflow: str,
        *,
        status: str | None = None,
        failed_step: str | None = None,
        workflow_id: str | None = None,
        error_type: str | None = None,
    ) -> RunDetail:
        """Assert that *workflow* recorded a run like this, and return its newest such run.

        Args:
            workflow: the workflow name.
            status: the run's status (``completed``, ``failed``, ``cancelled`` ...).
            failed_step: the name of the step whose failure ended the run.
            workflow_id: the run's logical workflow id.
            error_type: the exception type recorded on the run (its class name or its full
                dotted name).

        Raises:
            AssertionError: no recorded run matches; the message lists what was recorded.
        """
        found = self.runs(workflow=workflow, workflow_id=workflow_id, limit=1000)
        for summary in found:
            detail = self.store.get_run(summary.run_id)
            if _matches(detail, status, failed_step, error_type):
                return detail
        wanted = {
            "status": status,
            "failed_step": failed_step,
            "workflow_id": workflow_id,
            "error_type": error_type,
        }
        shown = ", ".join(f"{k}={v!r}" for k, v in wanted.items() if v is not None)
        recorded = [_describe(self.store.get_run(s.run_id)) for s in found[:10]]
        raise AssertionError(
            f"no {workflow!r} run recorded with {shown or 'any outcome'}; recorded: "
            + ("; ".join(recorded) if recorded else "no run of this workflow")
        )

    def _plug(self) -> None:
        self._undo.append(_audit_sampling(self.tracer_provider))
        self._undo.append(_mute_app_history(self.tracer_provider))
        _SWITCHBOARD.targets.extend([self.processor, self._span_processor])

    def _unplug(self) -> None:
        for target in (self.processor, self._span_processor):
            if target in _SWITCHBOARD.targets:
                _SWITCHBOARD.targets.remove(target)
        while self._undo:
            self._undo.pop()()
        self.processor.shutdown(_FLUSH_TIMEOUT_MS)
        self._span_processor.shutdown()
        self.store.close()


def _failed_step_name(detail: RunDetail) -> str | None:
    step = detail.failed_step
    return step.step_name if step is not None else None


def _matches(
    detail: RunDetail, status: str | None, failed_step: str | None, error_type: str | None
) -> bool:
    if status is not None and detail.status != status:
        return False
    if failed_step is not None and _failed_step_name(detail) != failed_step:
        return False
    if error_type is not None:
        recorded = detail.error_type or ""
        return error_type in (recorded, recorded.rsplit(".", 1)[-1])
    return True


def _describe(detail: RunDetail) -> str:
    failed = _failed_step_name(detail)
    where = f" at {failed!r}" if failed else ""
    error = f" ({detail.error_type})" if detail.error_type else ""
    return f"{detail.workflow_id} {detail.status}{where}{error}"


@pytest.fixture
def flowtel_history(tmp_path: Path) -> Iterator[FlowtelHistory]:
    """A configured throwaway flowtel history (SQLite in ``tmp_path``) for one test.

    Workflows the test runs through the global tracer provider are recorded; the value gives
    the database URL, the finished spans and ``assert_run(workflow, status=, failed_step=)``.
    """
    provider = _plugged_provider()
    history = FlowtelHistory(f"sqlite:///{tmp_path / 'flowtel-history.db'}", provider)
    try:
        history._plug()
        yield history
    finally:
        history._unplug()
