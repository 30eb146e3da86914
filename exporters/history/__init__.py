"""The history pipeline: span -> event -> row, on the application's thread and two of flowtel's.

:class:`~exporters.history.processor.WorkflowHistorySpanProcessor` is the thin ``SpanProcessor``
facade: it captures the few fields a row needs (:mod:`.capture`) and enqueues them, nothing more.
The writer (:mod:`.writer`) owns everything after the queue: draining, folding events into run
state (:mod:`.pending`, :mod:`.rows`), cleaning rows (:mod:`.sanitize`), committing on the
database thread (:mod:`.dbthread`), tracking the database's health (:mod:`.health`), answering
flushes and durable waits (:mod:`.waits`), spooling, replaying and heart-beating. May import
:mod:`exporters.spool`, :mod:`exporters.db`, :mod:`exporters.sdk_internals`,
:mod:`exporters.errors` and :mod:`instrumentation`.
"""
