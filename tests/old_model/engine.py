"""The old provisioning engine, written the way the system flowtel replaces wrote it (a fixture).

``BaseWorkflow`` runs ``WorkflowStep`` objects whose ``execute(context)`` returns a
``StepExecutionResult`` and records its own history with ad-hoc SQL: an INSERT at start, an
UPDATE after each step, an UPDATE in ``finally``, every database error logged and swallowed.
The old defects are kept on purpose so tests can show flowtel fixing them: a finished run is
stored as ``success`` (not a status the table's readers know), an exception leaves the run
``running``, a step that failed with ``should_continue=True`` is recorded as completed, the
progress UPDATE names a column the table does not have, and rows are matched by ``workflow_id``
so re-provisioning a server rewrites its older rows too.
"""

# ruff: noqa: UP006, UP035, UP045  (the old code's typing style, kept as it was)

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Dict, List, Optional

logger = logging.getLogger(__name__)


class StepStatus(Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRY = "retry"


@dataclass
class StepExecutionResult:
    status: StepStatus
    message: str = ""
    data: Dict[str, Any] = field(default_factory=dict)
    should_continue: bool = True
    next_step: Optional[str] = None
    retry_after: Optional[float] = None

    @classmethod
    def success(cls, message="", data=None, next_step=None) -> "StepExecutionResult":
        return cls(StepStatus.COMPLETED, message, data or {}, True, next_step)

    @classmethod
    def failure(cls, message, should_continue=False, next_step=None) -> "StepExecutionResult":
        return cls(StepStatus.FAILED, message, {}, should_continue, next_step)

    @classmethod
    def retry(cls, message, retry_after=None) -> "StepExecutionResult":
        return cls(StepStatus.RETRY, message, retry_after=retry_after)

    @classmethod
    def skip(cls, message="") -> "StepExecutionResult":
        return cls(StepStatus.SKIPPED, message)


@dataclass
class StepContext:
    workflow_id: str
    server_id: str
    device_type: str
    server_ip: Optional[str] = None
    ipmi_ip: Optional[str] = None
    gateway: Optional[str] = None
    data: Dict[str, Any] = field(default_factory=dict)
    errors: List[str] = field(default_factory=list)


class WorkflowStep:
    def __init__(self, name, description, max_retries=3, retry_delay=5.0):
        self.name = name
        self.description = description
        self.max_retries = max_retries
        self.retry_delay = retry_delay

    def execute(self, context: StepContext) -> StepExecutionResult:
        raise NotImplementedError

    def validate_prerequisites(self, context: StepContext) -> bool:
        return True


class BaseWorkflow:
    history_db = "provisioning.db"

    def __init__(self, name, description):
        self.name = name
        self.description = description
        self.steps: List[WorkflowStep] = []

    def validate_prerequisites(self, context: StepContext) -> bool:
        return True

    def cleanup(self, context: StepContext) -> None:
        pass

    def execute(self, context: StepContext) -> bool:
        meta = {
            "workflow_name": self.name,
            "description": self.description,
            "current_step_name": None,
            "current_step_index": 0,
            "steps": [],
            "context_data": {"server_ip": context.server_ip, "gateway": context.gateway},
            "timestamps": {"started": datetime.now().isoformat()},
            "errors": context.errors,
        }
        self._sql(
            "INSERT INTO workflow_history (workflow_id, server_id, device_type, status, "
            "started_at, total_steps, metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (context.workflow_id, context.server_id, context.device_type, "running",
             datetime.now().isoformat(), len(self.steps), json.dumps(meta)),
        )  # fmt: skip
        completed = 0
        success = False
        try:
            if not self.validate_prerequisites(context):
                self._finish(context, "failed", "; ".join(context.errors), completed, meta)
                return False
            index = 0
            while index < len(self.steps):
                step = self.steps[index]
                meta["current_step_name"] = step.name
                meta["current_step_index"] = index + 1
                result = self._run_step(step, context)
                if result.status == StepStatus.FAILED:
                    context.errors.append(result.message)
                    if not result.should_continue:
                        self._finish(context, "failed", result.message, completed, meta)
                        return False
                skipped = result.status == StepStatus.SKIPPED
                meta["steps"].append(
                    {"name": step.name, "status": "skipped" if skipped else "completed",
                     "message": result.message, "finished": datetime.now().isoformat()}
                )  # fmt: skip
                completed += 1
                context.data.update(result.data)
                self._sql(
                    "UPDATE workflow_history SET steps_completed = ?, current_step = ?, "
                    "metadata = ? WHERE workflow_id = ?",
                    (completed, step.name, json.dumps(meta), context.workflow_id),
                )
                index = self._index_of(result.next_step) if result.next_step else index + 1
            success = True
            return True
        except Exception as e:
            logger.error("workflow %s failed: %s", self.name, e)
            context.errors.append(str(e))
            return False
        finally:
            if success:
                self._finish(context, "success", None, completed, meta)
            self.cleanup(context)

    def _run_step(self, step: WorkflowStep, context: StepContext) -> StepExecutionResult:
        if not step.validate_prerequisites(context):
            return StepExecutionResult.failure(f"prerequisites not met for {step.name}")
        attempt = 0
        while True:
            attempt += 1
            try:
                result = step.execute(context)
            except Exception as e:
                if attempt > step.max_retries:
                    raise
                result = StepExecutionResult.retry(str(e))
            if result.status != StepStatus.RETRY:
                return result
            if attempt > step.max_retries:
                return StepExecutionResult.failure(f"{step.name}: {result.message}")
            time.sleep(result.retry_after if result.retry_after is not None else step.retry_delay)

    def _index_of(self, name: str) -> int:
        for i, step in enumerate(self.steps):
            if step.name == name:
                return i
        raise ValueError(f"unknown step {name}")

    def _finish(self, context, status, error, completed, meta) -> None:
        meta["timestamps"]["finished"] = datetime.now().isoformat()
        self._sql(
            "UPDATE workflow_history SET status = ?, completed_at = ?, error_message = ?, "
            "steps_completed = ?, metadata = ? WHERE workflow_id = ?",
            (status, datetime.now().isoformat(), error, completed, json.dumps(meta),
             context.workflow_id),
        )  # fmt: skip

    def _sql(self, statement: str, params: tuple) -> None:
        try:
            conn = sqlite3.connect(self.history_db)
            conn.execute(statement, params)
            conn.commit()
            conn.close()
        except Exception as e:
            logger.warning("could not record workflow history: %s", e)
