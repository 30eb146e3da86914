"""The reaper: gives up on runs whose process stopped beating.

While a run is active, the writer that owns it refreshes its row's ``updated_at`` every few
seconds (:mod:`exporters.db.heartbeat`). A process that dies
(SIGKILL, power cut, OOM) stops beating; :func:`reap` (``flowtel reap --older-than 10m``)
then marks its ``running`` rows whose heartbeat is older than the threshold ``abandoned``,
records why in ``metadata.abandoned`` and fills an empty ``error_message``. The run's clock
stops at the reap (an empty ``completed_at`` and ``duration_ms`` are filled in), and its steps
still ``running`` become ``abandoned`` too, ending at the reap. It does not touch
``seq``, and ``abandoned`` is not a final status, so a late terminal write from a process that
was only stalled still replaces it. Rows without any heartbeat (imported from the old system,
or written by other tools) never beat, so nothing says they stopped: the reaper leaves them
alone. Choose a threshold well above the heartbeat interval.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection, Engine

from exporters.db.heartbeat import HOST
from exporters.db.schema import workflow_history, workflow_step_history
from exporters.ops.durations import duration_text
from instrumentation.attributes import RunStatus

__all__ = ["ReapedRun", "reap"]

_RUNNING = RunStatus.RUNNING.value
_ABANDONED = RunStatus.ABANDONED.value
_t = workflow_history
_s = workflow_step_history
_last_seen = _t.c.updated_at  # NULL (never beat) is never older than the cut-off


@dataclass(frozen=True)
class ReapedRun:
    """A run the reaper marked ``abandoned``."""

    run_id: str
    workflow_id: str
    host: str | None
    pid: int | None
    last_heartbeat: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        """The run as a JSON-ready dict."""
        seen = self.last_heartbeat.isoformat() if self.last_heartbeat else None
        return {**self.__dict__, "last_heartbeat": seen}


def reap(
    engine: Engine,
    older_than: dt.timedelta | float,
    *,
    now: dt.datetime | None = None,
) -> list[ReapedRun]:
    """Mark ``running`` runs without a heartbeat for *older_than* as ``abandoned``.

    Each row is updated on its own, guarded by the state it was read in (still ``running``,
    same ``seq``, heartbeat still old), so a run that beats or ends meanwhile is left alone and
    two reapers never report the same run.

    Args:
        engine: the history database.
        older_than: a :class:`~datetime.timedelta` or seconds.
        now: the reaper's clock (default: now, UTC).

    Returns:
        The runs marked ``abandoned``.
    """
    delta = older_than if isinstance(older_than, dt.timedelta) else dt.timedelta(seconds=older_than)
    now = now or dt.datetime.now(dt.UTC)
    cutoff = now - delta
    query = select(
        _t.c.run_id,
        _t.c.workflow_id,
        _t.c.host,
        _t.c.pid,
        _t.c.seq,
        _t.c.metadata,
        _last_seen,
        _t.c.started_at,
    ).where(_t.c.status == _RUNNING, _last_seen < cutoff)
    mark = (
        update(_t)
        .where(
            _t.c.run_id == bindparam("b_run_id"),
            _t.c.status == _RUNNING,
            _t.c.seq == bindparam("b_seq"),
            _last_seen < bindparam("b_cutoff", type_=_t.c.updated_at.type),
        )
        .values(
            status=_ABANDONED,
            metadata=bindparam("b_metadata", type_=_t.c.metadata.type),
            error_message=func.coalesce(_t.c.error_message, bindparam("b_reason")),
            completed_at=func.coalesce(
                _t.c.completed_at, bindparam("b_now", type_=_t.c.completed_at.type)
            ),
            duration_ms=func.coalesce(_t.c.duration_ms, bindparam("b_duration")),
        )
    )
    reaped: list[ReapedRun] = []
    with engine.begin() as connection:
        for row in connection.execute(query).all():
            run_id, workflow_id, host, pid, seq, metadata, last_seen, started_at = row
            reason = (
                f"no heartbeat for more than {duration_text(delta)} "
                f"(last {last_seen.isoformat() if last_seen else 'never'}): "
                f"process {pid} on {host} presumed dead"
            )
            meta = dict(metadata) if isinstance(metadata, dict) else {}
            meta["abandoned"] = {
                "reason": reason,
                "reaped_at": now.isoformat(),
                "reaped_by": f"{HOST}:{os.getpid()}",
                "last_heartbeat": last_seen.isoformat() if last_seen else None,
            }
            params = {
                "b_run_id": run_id,
                "b_seq": seq,
                "b_cutoff": cutoff,
                "b_metadata": meta,
                "b_reason": f"abandoned: {reason}",
                "b_now": now,
                "b_duration": _elapsed_ms(started_at, now),
            }
            if connection.execute(mark, params).rowcount == 1:
                _close_open_steps(connection, run_id, now)
                reaped.append(ReapedRun(run_id, workflow_id, host, pid, last_seen))
    return reaped


def _elapsed_ms(started_at: dt.datetime | None, now: dt.datetime) -> int | None:
    """Milliseconds from *started_at* to *now* (never negative), or ``None`` without a start."""
    if started_at is None:
        return None
    if started_at.tzinfo is None:
        started_at = started_at.replace(tzinfo=dt.UTC)
    return max(0, (now - started_at) // dt.timedelta(milliseconds=1))


def _close_open_steps(connection: Connection, run_id: str, now: dt.datetime) -> None:
    """Mark the reaped run's ``running`` steps ``abandoned``, ending at the reap."""
    open_steps = select(_s.c.id, _s.c.started_at).where(
        _s.c.run_id == run_id, _s.c.status == _RUNNING
    )
    close = (
        update(_s)
        .where(_s.c.id == bindparam("b_id"), _s.c.status == _RUNNING)
        .values(
            status=_ABANDONED,
            completed_at=func.coalesce(
                _s.c.completed_at, bindparam("b_now", type_=_s.c.completed_at.type)
            ),
            duration_ms=func.coalesce(_s.c.duration_ms, bindparam("b_duration")),
        )
    )
    params = [
        {"b_id": step_id, "b_now": now, "b_duration": _elapsed_ms(started_at, now)}
        for step_id, started_at in connection.execute(open_steps).all()
    ]
    if params:
        connection.execute(close, params)
