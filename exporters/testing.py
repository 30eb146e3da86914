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

Importing this module has no side effect; the provider is touched when the fixture runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters.db.engine import make_engine
from exporters.history.processor import WorkflowHistorySpanProcessor
from exporters.query.records import RunDetail, RunSummary
from exporters.query.store import HistoryStore
from exporters.telemetry.provider import PrivateRandomIdGenerator, span_limits

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


_SWITCHBOARD = _Switchboard()
_INSTALLED: set[int] = set()  # ids of the providers the switchboard was added to
_LOCK = threading.Lock()


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
        if id(provider) not in _INSTALLED:
            provider.add_span_processor(_SWITCHBOARD)
            _INSTALLED.add(id(provider))
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
        self._span_processor = SimpleSpanProcessor(self.spans)

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
        _SWITCHBOARD.targets.extend([self.processor, self._span_processor])

    def _unplug(self) -> None:
        for target in (self.processor, self._span_processor):
            if target in _SWITCHBOARD.targets:
                _SWITCHBOARD.targets.remove(target)
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
    history._plug()
    try:
        yield history
    finally:
        history._unplug()
