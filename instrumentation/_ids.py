"""Identifier generation that never releases the GIL.

``uuid.uuid4()`` reads ``os.urandom``, which releases the GIL; on a CPU-bound workflow thread
that hands the GIL back and forth often enough to starve the history writer thread. Run ids are
therefore random version-4 UUIDs drawn from ``random.getrandbits`` (the same source the SDK uses
for span ids): unique, not secret.
"""

from __future__ import annotations

import random
import uuid

__all__ = ["new_run_id"]

_VERSION_4_MASK = ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_4_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_run_id() -> str:
    """Return a new random run id in canonical UUID form (``8-4-4-4-12`` hex digits)."""
    value = (random.getrandbits(128) & _VERSION_4_MASK) | _VERSION_4_BITS
    return str(uuid.UUID(int=value))
