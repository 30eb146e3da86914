"""The root of flowtel's exceptions, shared by the producer and the consumer side.

Every exception flowtel raises on purpose derives from :class:`FlowtelError` as well as from
the built-in it has always been (``ValueError``, ``LookupError``, ``TypeError``), so
``except FlowtelError`` catches flowtel's own refusals and existing ``except ValueError``
handlers keep working. The consumer side's subclasses live in :mod:`exporters.errors`.
"""

from __future__ import annotations

__all__ = ["FlowtelError"]


class FlowtelError(Exception):
    """Base class of every error flowtel raises on purpose."""
