"""History from the collector's stream: the ``flowtel ingest`` receiver and the worker's side.

Workers that hold no database credentials emit their workflow spans over OTLP; the
OpenTelemetry Collector queues, retries and routes them; ``flowtel ingest`` receives them
(:mod:`.server`, OTLP/HTTP ``POST /v1/traces``), decodes them with the official
``opentelemetry-proto`` messages (:mod:`.decode`), turns them into the SDK's span objects and
hands them to the same history processor the in-process path uses (:mod:`.adapt`), and answers
only once the rows are committed. On the worker, :mod:`.forward` makes every workflow span
reach the collector whatever the sampler says, and sends a start signal so a run is visible as
``running`` before its first step ends. :mod:`.wire` names the two attributes this adds to the
span contract. May import :mod:`exporters.history`, :mod:`exporters.db`, :mod:`exporters.errors`
and :mod:`instrumentation`.
"""
