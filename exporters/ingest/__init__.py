"""History from the collector's stream: the ``flowtel ingest`` receiver and the worker's side.

Workers that hold no database credentials emit their workflow spans over OTLP; the
OpenTelemetry Collector queues, retries and routes them; ``flowtel ingest`` receives them
(:mod:`.server`, OTLP/HTTP ``POST /v1/traces``), decodes them with the official
``opentelemetry-proto`` messages (:mod:`.decode`), turns them into the SDK's span objects and
hands them to the same history processor the in-process path uses (:mod:`.adapt`), and answers
only once the rows are committed. The worker's side of collector mode is
:mod:`exporters.telemetry.forward`; the two attributes it adds to the span contract are named in
:mod:`instrumentation.attributes`. May import :mod:`exporters.history`, :mod:`exporters.db`,
:mod:`exporters.errors` and :mod:`instrumentation`.

Ingest trusts no sender: :mod:`.adapt` refuses run ids and status words the in-process API
would refuse, :mod:`.cicd` maps OpenTelemetry's CI/CD conventions onto the span contract,
:mod:`.owners` keeps a run to the service and trace that first wrote it, and :mod:`.sink`
reserves room for a whole request before queuing it, so nothing dropped is ever acknowledged.
"""
