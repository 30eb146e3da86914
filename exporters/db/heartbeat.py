"""The writer's heartbeat: the statement that tells the reaper a run's process is alive.

While a run is active, the writer that owns it refreshes its row's ``updated_at`` every few
seconds with :func:`heartbeat`: one ``UPDATE ... WHERE run_id IN (...) AND status = 'running'``
for all its active runs (in chunks of 1,000 ids, one transaction). :data:`HOST` is the host
name rows record, and the reaper signs its verdicts with.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Sequence

from sqlalchemy import bindparam, update
from sqlalchemy.engine import Connection

from exporters.db.schema import workflow_history
from instrumentation.attributes import RunStatus

__all__ = ["HEARTBEAT_CHUNK", "HOST", "heartbeat"]

HOST = socket.gethostname()
"""This machine's host name, as rows record it."""

HEARTBEAT_CHUNK = 1_000
"""Run ids per heartbeat statement."""

_RUNNING = RunStatus.RUNNING.value
_t = workflow_history
_HEARTBEAT = (
    update(_t)
    .where(_t.c.run_id.in_(bindparam("run_ids", expanding=True)), _t.c.status == _RUNNING)
    .values(updated_at=bindparam("beat_at", type_=_t.c.updated_at.type))
)


def heartbeat(
    connection: Connection, run_ids: Sequence[str], now: dt.datetime | None = None
) -> int:
    """Set ``updated_at`` of the still-running rows among *run_ids*; return rows touched."""
    beat_at = now or dt.datetime.now(dt.UTC)
    touched = 0
    for offset in range(0, len(run_ids), HEARTBEAT_CHUNK):
        chunk = list(run_ids[offset : offset + HEARTBEAT_CHUNK])
        result = connection.execute(_HEARTBEAT, {"run_ids": chunk, "beat_at": beat_at})
        touched += max(result.rowcount, 0)
    return touched
