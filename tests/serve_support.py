"""What the web tests share: a history with hostile values, and ``flowtel serve`` on a thread.

:func:`seed_history` writes runs into a fresh history database (completed, failed with a stack
trace and log lines, running, undated, and one whose every text field carries an XSS payload).
:func:`serving` runs the real application on uvicorn on a free loopback port for the duration
of a ``with`` block. :func:`seed_wide_run` adds a run whose every text is long.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from exporters.db.schema import workflow_history, workflow_step_history

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=2)
SCRIPT = "<script>alert('xss')</script>"
IMG = '"><img src=x onerror=alert(1)>'
PAYLOADS = (SCRIPT, IMG)
_span_ids = itertools.count(1)


def run_row(run_id: str, **values: Any) -> dict[str, Any]:
    """A complete workflow_history row; *values* override the defaults."""
    row: dict[str, Any] = {
        "run_id": run_id,
        "workflow_id": f"provision_{run_id[:8]}",
        "workflow_name": "provision_server",
        "server_id": "srv-0001",
        "device_type": "s2_c2_small",
        "status": "completed",
        "started_at": T0,
        "completed_at": T0 + dt.timedelta(seconds=90),
        "duration_ms": 90_000,
        "steps_completed": 3,
        "total_steps": 3,
        "metadata": {"context_data": {"server_id": "srv-0001", "ipmi_password": "[REDACTED]"}},
        "seq": 1,
    }
    row.update(values)
    return row


def step_row(run_id: str, index: int, name: str, attempt: int = 1, **values: Any) -> dict[str, Any]:
    """A complete workflow_step_history row."""
    start = T0 + dt.timedelta(seconds=index * 10 + attempt)
    row: dict[str, Any] = {
        "run_id": run_id,
        "span_id": f"{next(_span_ids):016x}",
        "step_index": index,
        "step_name": name,
        "attempt": attempt,
        "status": "completed",
        "started_at": start,
        "completed_at": start + dt.timedelta(milliseconds=500),
        "duration_ms": 500,
        "message": f"{name} done",
    }
    row.update(values)
    return row


FAILED = "f0000000-0000-4000-8000-000000000001"
RUNNING = "a0000000-0000-4000-8000-000000000002"
HOSTILE = "e0000000-0000-4000-8000-000000000003"
UNDATED = "d0000000-0000-4000-8000-000000000004"
STACK = 'Traceback (most recent call last):\n  File "provision.py", line 7\nTimeoutError: stuck'


def seed_history(engine: Engine, completed: int = 6) -> list[str]:
    """Write the test history; return every run id, newest first (undated last)."""
    runs = [
        run_row(f"c{i:07d}-0000-4000-8000-00000000c{i:03d}",
                started_at=T0 - dt.timedelta(minutes=10 * (i + 1)))
        for i in range(completed)
    ]  # fmt: skip
    steps = [step_row(r["run_id"], i, f"step_{i}") for r in runs for i in (1, 2, 3)]
    runs.append(
        run_row(
            FAILED, status="failed", started_at=T0 + dt.timedelta(minutes=1),
            steps_completed=1, current_step="commission", error_type="TimeoutError",
            error_message="step 'commission' failed: TimeoutError: srv-0001 stuck password=hunter2",
            metadata={"context_data": {"server_ip": "10.0.0.1"},
                      "trace": {"url": "http://127.0.0.1:9411/zipkin/traces/abc"}},
        )
    )  # fmt: skip
    steps += [
        step_row(FAILED, 1, "allocate"),
        step_row(FAILED, 2, "commission", status="retrying", error_type="TimeoutError"),
        step_row(
            FAILED, 2, "commission", attempt=2, status="failed", error_type="TimeoutError",
            error_message="srv-0001 stuck in Commissioning", error_stacktrace=STACK,
            logs=[{"at": "2026-11-01T12:00:03Z", "severity": "warning", "logger": "maas",
                   "message": "still commissioning"}],
        ),
        step_row(FAILED, 3, "skip_me", status="skipped", duration_ms=0),
    ]  # fmt: skip
    runs.append(
        run_row(RUNNING, status="running", started_at=T0 + dt.timedelta(minutes=2),
                completed_at=None, duration_ms=None, steps_completed=1, current_step="commission")
    )  # fmt: skip
    steps += [
        step_row(RUNNING, 1, "allocate"),
        step_row(RUNNING, 2, "commission", status="running", completed_at=None, duration_ms=None),
    ]
    runs.append(
        run_row(
            HOSTILE, status="failed", started_at=T0 + dt.timedelta(minutes=3),
            workflow_name=f"wf{SCRIPT}", workflow_id=f"id{IMG}", server_id=IMG,
            current_step=f"step{SCRIPT}", error_type="ValueError", error_message=f"bad {IMG}",
            metadata={"context_data": {"note": SCRIPT, f"key{IMG}": IMG},
                      "trace": {"url": "javascript:alert(1)"}},
        )
    )  # fmt: skip
    steps.append(
        step_row(
            HOSTILE, 1, f"step{SCRIPT}", status="failed", error_type="ValueError",
            error_message=f"err {SCRIPT}", error_stacktrace=f"stack {IMG}", message=IMG,
            logs=[{"severity": "error", "logger": IMG, "message": f"log {SCRIPT}"}],
        )
    )  # fmt: skip
    runs.append(run_row(UNDATED, started_at=None, completed_at=None, status="pending"))
    with engine.begin() as conn:
        for row in runs:
            conn.execute(insert(workflow_history).values(row))
        for row in steps:
            conn.execute(insert(workflow_step_history).values(row))
    dated = sorted((r for r in runs if r["started_at"]), key=lambda r: r["started_at"])
    return [r["run_id"] for r in reversed(dated)] + [UNDATED]


WIDE = "b0000000-0000-4000-8000-000000000005"
LONG_STEP = "wait_for_the_commissioning_of_the_server_to_finish_and_report_back_to_maas"
LONG_ERROR_TYPE = "maas.client.errors.CommissioningTimeoutError"
LONG_ERROR = (
    "srv-0001 did not reach Ready: " + "the machine stayed in Commissioning, " * 20 + "x" * 300
)


def seed_wide_run(engine: Engine) -> str:
    """A failed run whose every text is long (a 1,000-character error, half of it one word,
    a 76-character step, a qualified error type), to check the pages fit a laptop window."""
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    run = run_row(
        WIDE, status="failed", started_at=started, workflow_id="provision_" + "w" * 60,
        steps_completed=1, current_step=LONG_STEP, error_type=LONG_ERROR_TYPE,
        error_message=f"step '{LONG_STEP}' failed: CommissioningTimeoutError: {LONG_ERROR}",
    )  # fmt: skip
    steps = [
        step_row(WIDE, 1, "allocate", started_at=started, completed_at=started),
        step_row(WIDE, 2, LONG_STEP, status="failed", started_at=started, completed_at=started,
                 error_type=LONG_ERROR_TYPE, error_message=LONG_ERROR),
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(workflow_history).values(run))
        for row in steps:
            conn.execute(insert(workflow_step_history).values(row))
    return WIDE


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run *app* on uvicorn on a free 127.0.0.1 port; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


CHROMEDRIVER_ENV = "FLOWTEL_CHROMEDRIVER"
CHROMIUM_ENV = "FLOWTEL_CHROMIUM"


def chrome(driver_path: str, browser_path: str | None = None, width: int = 1400) -> Any:
    """A headless Chromium driven by Debian's chromedriver (Selenium never downloads one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    if browser_path:
        options.binary_location = browser_path
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={width},1000", "--lang=en-US"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
