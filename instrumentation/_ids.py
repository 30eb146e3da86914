"""Identifier generation that never releases the GIL and never repeats after ``random.seed``.

``uuid.uuid4()`` reads ``os.urandom``, which releases the GIL; on a CPU-bound workflow thread
that hands the GIL back and forth often enough to starve the history writer thread. Run ids are
therefore random version-4 UUIDs drawn from a private ``random.Random`` (the same generator
kind the SDK uses for span ids), seeded once from the operating system and reseeded in a
forked child. It is private so that an application calling ``random.seed()`` — simulations and
tests do — cannot make run ids repeat and rows overwrite each other. Unique, not secret.
"""

from __future__ import annotations

import os
import random
import uuid

__all__ = ["ID_RANDOM", "new_run_id"]

ID_RANDOM = random.Random()
"""The generator behind run ids (and, through ``exporters``, span and trace ids)."""

os.register_at_fork(after_in_child=ID_RANDOM.seed)

_VERSION_4_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_4_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_run_id() -> str:
    """Return a new random run id in canonical UUID form (``8-4-4-4-12`` hex digits)."""
    value = (ID_RANDOM.getrandbits(128) & _VERSION_4_MASK) | _VERSION_4_BITS
    return str(uuid.UUID(int=value))
