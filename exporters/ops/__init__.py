"""Maintenance of a live history: reaping dead runs, pruning old ones, and the duration grammar.

:func:`~exporters.ops.reaper.reap` marks runs whose process died as ``abandoned``;
:func:`~exporters.ops.retention.prune` deletes old finished runs; :mod:`.durations` parses
``30m``/``7d`` for both. May import :mod:`exporters.db`, :mod:`exporters.errors` and
:mod:`instrumentation`.
"""
