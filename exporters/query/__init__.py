"""The read side: what the command line and users ask of a history database.

:class:`~exporters.query.store.HistoryStore` lists, finds (:mod:`.lookup`) and summarises
(:mod:`.stats`) runs as plain records (:mod:`.records`); :mod:`.error_types` gives the one
short form of an error type that tables and pages show. It never writes. May import
:mod:`exporters.db`, :mod:`exporters.errors` and :mod:`instrumentation`.
"""
