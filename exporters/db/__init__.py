"""The database: engine, schema, upsert statements, codecs, schema check and migrations.

Everything that knows SQL lives here: :mod:`.engine` (URLs, engines, driver options),
:mod:`.schema` (the two tables), :mod:`.upsert` and :mod:`.bulk` (the order-guarded upserts),
:mod:`.json` and :mod:`.timestamps` (the codecs), :mod:`.heartbeat` (the writer's liveness
statement), :mod:`.driver_errors` (what a driver's exception means), :mod:`.check` (is this
database usable) and :mod:`.migrations` (Alembic). It knows nothing of spans, writers or the
command line: it may import only :mod:`exporters.errors` and :mod:`instrumentation`.
"""
