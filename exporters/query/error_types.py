"""How an error's type is shown to a person: its class name, without the module path.

The history keeps the fully qualified type (``maas.errors.CommissioningTimeout``, what
``--json`` and the API return); the tables of the command line and the pages of ``flowtel
serve`` show :func:`short_error_type`'s class name and keep the full type for ``--json`` and
for a hover title. Imports nothing.
"""

from __future__ import annotations

__all__ = ["short_error_type"]


def short_error_type(error_type: str | None) -> str | None:
    """The class name of a qualified error type (``a.b.Timeout`` → ``Timeout``); ``None``
    and empty stay as they are."""
    if not error_type:
        return error_type
    return error_type.rsplit(".", 1)[-1]
