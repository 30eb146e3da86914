"""The exit statuses every ``flowtel`` command uses, so scripts can tell failures apart.

``0`` the command did what was asked; ``1`` it ran and the answer is no (an unknown or
ambiguous run, a schema that differs, a failed demo workflow's database check); ``2`` the
command line was wrong (click's usage errors: an unknown option, a bad ``--since``); ``3`` the
history database is unavailable or is not a flowtel history that can be read (it cannot be
reached or opened, a SQLite file that does not exist, tables that are missing or need ``flowtel
db upgrade``); ``130`` interrupted by Ctrl-C where the command is not a live view.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitStatus"]


class ExitStatus(IntEnum):
    """A ``flowtel`` command's exit status (listed in docs/guide.md, Command line)."""

    OK = 0
    NO = 1
    USAGE = 2
    DATABASE_UNAVAILABLE = 3
    INTERRUPTED = 130
