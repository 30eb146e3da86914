"""The local spool: rows the database could not take, on disk until it can.

:mod:`.files` appends fsync'd, CRC-framed records (:mod:`.format`) under a per-database key, and
:mod:`.replay` folds them back into the database in order, isolating rows the database refuses.
May import :mod:`exporters.db`, :mod:`exporters.errors` and :mod:`instrumentation`.
"""
