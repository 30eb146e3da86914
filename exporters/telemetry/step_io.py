"""Traces leave without the steps' recorded inputs and outputs, unless the user asks for them.

A step that records what it was given and what it returned (``@step(record_io=True)``,
``step.set_input``/``set_output``) carries them as ``workflow.step.input`` and
``workflow.step.output`` on its span, where the history processor reads them into the step
row. Those values can be large and are business data, so the OTLP export that ``configure()``
installs sends step spans without them; ``FLOWTEL_EXPORT_STEP_IO=true`` keeps them on the
exported spans too. Collector mode always keeps them (ingest builds the rows from them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from instrumentation import attributes as attr

__all__ = ["WithoutStepIO", "export_step_io_from_env"]

_IO_KEYS = (attr.STEP_INPUT, attr.STEP_OUTPUT)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def export_step_io_from_env() -> bool:
    """Whether ``FLOWTEL_EXPORT_STEP_IO`` asks for inputs and outputs on exported spans.

    Raises:
        ValueError: the variable is set to something that is not a yes or a no.
    """
    raw = os.environ.get("FLOWTEL_EXPORT_STEP_IO", "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"FLOWTEL_EXPORT_STEP_IO={raw!r} is not true or false")


class WithoutStepIO(SpanExporter):
    """Exports through *exporter* the spans with their step input and output attributes left
    out (spans without them pass unchanged)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export *spans*, each step span stripped of its input and output."""
        return self.exporter.export([_stripped(span) for span in spans])

    def shutdown(self) -> None:
        """Shut the wrapped exporter down."""
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the wrapped exporter."""
        return self.exporter.force_flush(timeout_millis)


def _stripped(span: ReadableSpan) -> ReadableSpan:
    attributes = span.attributes or {}
    if not any(key in attributes for key in _IO_KEYS):
        return span
    kept = {key: value for key, value in attributes.items() if key not in _IO_KEYS}
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=kept,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )
