"""A sampler wrapper that never thins the audit trail.

Trace sampling decides what reaches the collector; it must not decide what reaches the
history tables. :class:`AuditSampler` asks the wrapped sampler first and turns its ``DROP``
into ``RECORD_ONLY`` for spans that carry ``workflow.run_id`` at creation: such spans reach
every span processor (so the history processor sees 100 % of runs) but are not exported. The
caller's attributes are passed through; the SDK's own ``AlwaysRecordSampler`` loses them.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from exporters.sdk_internals import sampler_from_env
from instrumentation.attributes import RUN_ID

__all__ = ["AuditSampler", "sampler_from_env"]


class AuditSampler(Sampler):
    """Wraps *delegate*; workflow and step spans are at least recorded, never dropped."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """Delegate, then upgrade ``DROP`` to ``RECORD_ONLY`` for workflow spans."""
        result = self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is Decision.DROP and attributes and RUN_ID in attributes:
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        """``AuditSampler{<delegate description>}``."""
        return f"AuditSampler{{{self.delegate.get_description()}}}"
