"""The baseline flowtel replaces: history written with ad-hoc SQL inside the workflow class.

Rebuilt from DESIGN.md's description of the old system, as faithfully as a benchmark can: the
old table's columns only; a plain ``INSERT`` when the workflow starts; after every step an
``UPDATE`` of ``steps_completed`` and the whole ``metadata`` JSON (the old dashboards' shape,
re-encoded each time); an ``UPDATE`` in ``finally``; each statement committed at once on the
workflow's own thread, every error logged and swallowed. Rows are found by the logical
``workflow_id`` (indexed), as the old code did. SQLAlchemy Core over one connection the
workflow keeps; SQLite in its default journal mode (``DELETE``, ``synchronous=FULL``), which is
what the old tool ran with. No spans: the old system had none.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import sqlalchemy as sa

from benchmarks.common import STEPS

__all__ = ["OLD_TABLE", "OldWayRecorder"]

logger = logging.getLogger("flowtel.bench.oldway")

_old_metadata = sa.MetaData()
OLD_TABLE = sa.Table(
    "old_workflow_history",
    _old_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("workflow_id", sa.String(255), nullable=False, index=True),
    sa.Column("server_id", sa.String(255)),
    sa.Column("device_type", sa.String(255)),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", sa.DateTime),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("steps_completed", sa.Integer, nullable=False, default=0),
    sa.Column("total_steps", sa.Integer, nullable=False, default=0),
    sa.Column("error_message", sa.Text),
    sa.Column("metadata", sa.Text),
)

_INSERT = sa.text(
    "INSERT INTO old_workflow_history (workflow_id, server_id, device_type, status, "
    "started_at, steps_completed, total_steps, metadata) VALUES (:workflow_id, :server_id, "
    ":device_type, 'running', :started_at, 0, :total_steps, :metadata)"
)
_STEP_UPDATE = sa.text(
    "UPDATE old_workflow_history SET steps_completed = :steps_completed, metadata = :metadata "
    "WHERE workflow_id = :workflow_id"
)
_FINAL_UPDATE = sa.text(
    "UPDATE old_workflow_history SET status = :status, completed_at = :completed_at, "
    "steps_completed = :steps_completed, error_message = :error_message, metadata = :metadata "
    "WHERE workflow_id = :workflow_id"
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class OldWayRecorder:
    """Runs the benchmark's 23-step workflow the old way against *engine*."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        _old_metadata.drop_all(engine)
        _old_metadata.create_all(engine)
        self.connection = engine.connect()

    def close(self) -> None:
        self.connection.close()
        self.engine.dispose()

    def reset(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM old_workflow_history"))

    def _execute(self, statement: Any, parameters: dict[str, Any]) -> None:
        try:
            self.connection.execute(statement, parameters)
            self.connection.commit()
        except Exception:  # the old code logged every database error and carried on
            logger.exception("could not record workflow history")
            self.connection.rollback()

    def run_workflow(self, n: int, prefix: str = "old") -> None:
        """One workflow: INSERT, an UPDATE per step, a final UPDATE, each committed."""
        workflow_id = f"provision_{prefix}-{n}"
        server_id = f"{prefix}-{n}"
        started = _now()
        meta: dict[str, Any] = {
            "workflow_name": "provision_server",
            "description": "Provision a bare-metal server",
            "current_step_name": None,
            "current_step_index": None,
            "steps": [],
            "context_data": {"server_id": server_id, "device_type": "a1_c5_large"},
            "timestamps": {"started_at": started.isoformat(), "completed_at": None},
            "errors": [],
        }
        self._execute(
            _INSERT,
            {
                "workflow_id": workflow_id,
                "server_id": server_id,
                "device_type": "a1_c5_large",
                "started_at": started,
                "total_steps": len(STEPS),
                "metadata": json.dumps(meta),
            },
        )
        completed = 0
        status, error = "failed", None
        try:
            for index, name in enumerate(STEPS, start=1):
                step_started = _now()
                meta["current_step_name"], meta["current_step_index"] = name, index
                # the step's work would run here
                completed += 1
                meta["steps"].append(
                    {
                        "index": index,
                        "name": name,
                        "status": "completed",
                        "started_at": step_started.isoformat(),
                        "completed_at": _now().isoformat(),
                        "attempts": 1,
                        "error": None,
                    }
                )
                self._execute(
                    _STEP_UPDATE,
                    {
                        "steps_completed": completed,
                        "metadata": json.dumps(meta),
                        "workflow_id": workflow_id,
                    },
                )
            status = "completed"
        except Exception as exc:  # pragma: no cover - the benchmark's steps do not fail
            error = str(exc)
            raise
        finally:
            finished = _now()
            meta["timestamps"]["completed_at"] = finished.isoformat()
            self._execute(
                _FINAL_UPDATE,
                {
                    "status": status,
                    "completed_at": finished,
                    "steps_completed": completed,
                    "error_message": error,
                    "metadata": json.dumps(meta),
                    "workflow_id": workflow_id,
                },
            )

    def committed_runs(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(
                    sa.text("SELECT count(*) FROM old_workflow_history WHERE status = 'completed'")
                ).scalar_one()
            )


def old_engine(url: str) -> sa.Engine:
    """A plain engine, without flowtel's settings: SQLite keeps its default journal mode."""
    return sa.create_engine(url)
