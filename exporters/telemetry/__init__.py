"""Process-wide OpenTelemetry wiring: provider, sampling, OTLP, metrics, logs and signals.

:mod:`.provider` builds the tracer provider flowtel installs (id generator, span limits);
:mod:`.sampling` keeps every workflow span recorded whatever the trace sampler says;
:mod:`.otlp` reads the exporter settings; :mod:`.metrics` counts runs and steps;
:mod:`.logs` wires structlog and the stdlib bridge; :mod:`.signals` flushes on SIGTERM. May
import :mod:`exporters.sdk_internals`, :mod:`exporters.errors` and :mod:`instrumentation`.
"""
