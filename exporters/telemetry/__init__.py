"""Process-wide OpenTelemetry wiring: provider, sampling, OTLP, metrics, logs, signals, export.

:mod:`.provider` builds the tracer provider flowtel installs (id generator, span limits);
:mod:`.sampling` keeps every workflow span recorded whatever the trace sampler says;
:mod:`.otlp` reads the exporter settings; :mod:`.metrics` counts runs and steps;
:mod:`.logs` wires structlog and the stdlib bridge; :mod:`.signals` flushes on SIGTERM;
:mod:`.export` is the OTLP span export that counts every span it drops or fails to send; and
:mod:`.forward` is collector mode's worker side (start signals, history-only copies, what the
export lost). May import :mod:`exporters.sdk_internals`, :mod:`exporters.errors` and
:mod:`instrumentation`.
"""
