"""The synthetic history ``bench_history_queries.py`` loads: runs and their step rows.

:func:`generate` yields ``--runs`` provisioning runs of the demo's 23 steps spread over a span of
days, with realistic mixes of device types, outcomes (early failures with their error, stack
trace and log line; cancellations; skipped steps; commissioning polls and IPMI retries) and
durations; :func:`rows` renders one run as its ``workflow_history`` row (with the full
``metadata`` JSON) and its ``workflow_step_history`` rows, as tuples in :data:`RUN_COLS` /
:data:`STEP_COLS` order. Seeded: the same arguments give the same history.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Iterator
from typing import Any, NamedTuple

from exporters.cli.demo_workflow import STEPS
from exporters.db.timestamps import EPOCH

RUN_COLS = (
    "run_id", "workflow_id", "workflow_name", "server_id", "device_type", "status", "started_at",
    "completed_at", "updated_at", "steps_completed", "total_steps", "current_step", "duration_ms",
    "error_type", "error_message", "metadata", "trace_id", "span_id", "service_name", "host",
    "pid", "seq",
)  # fmt: skip
STEP_COLS = (
    "run_id", "span_id", "step_index", "step_name", "attempt", "status", "started_at",
    "completed_at", "duration_ms", "message", "error_type", "error_message", "error_stacktrace",
    "logs",
)  # fmt: skip

DEVICES = (("s2_c2_small", 35), ("s2_c4_medium", 30), ("a1_c5_large", 20), ("g1_c4_gpu", 15))
Failure = tuple[int, str, str, float]  # step index, error type, message, probability
FAILURES: tuple[Failure, ...] = (
    (4, "TimeoutError", "{srv} still 'Commissioning' after 1800 s", 0.04),
    (16, "ConnectionError", "IPMI address {ipmi} unreachable: no answer in 3 s", 0.025),
    (20, "BiosVerificationError", "BIOS setting 'SR-IOV Support' is 'Disabled'", 0.015),
    (9, "SSHException", "ssh ubuntu@{ip}: connection reset by peer", 0.01),
)
CANCEL_RATE = 0.005
STACK = 'Traceback (most recent call last):\n  File "/srv/flowtel/workflows/provision.py", '
STACK += "line {n}, in execute\n    self.{step}(server)\n" * 6 + "{etype}: {msg}\n"


class Attempt(NamedTuple):
    """One step attempt of a generated run (times in epoch seconds; no end while running)."""

    index: int
    name: str
    attempt: int
    status: str
    start: float
    end: float | None
    failure: Failure | None


class Run(NamedTuple):
    """One generated run: its number, start, server, device type, IP, status, attempts, ids."""

    n: int
    start: float
    server: str
    device: str
    ip: str
    status: str
    attempts: list[Attempt]
    bits: int


def _attempts(rng: random.Random, start: float, device: str, failure: Failure | None,
              cancelled: bool, now: float) -> list[Attempt]:  # fmt: skip
    """The step attempts of one run, stopping at its failure, cancellation or now."""
    found: list[Attempt] = []
    at, slow = start, 1.3 if device == "g1_c4_gpu" else 1.0
    for index, spec in enumerate(STEPS, start=1):
        extra = int(rng.expovariate(1.0) * 1.4) if index == 4 else int(rng.random() < 0.25)
        tries = 1 + extra if index in (4, 16) else 1  # commissioning polls, IPMI retries
        for attempt in range(1, tries + 1):
            took = spec.weight * slow * rng.lognormvariate(3.3, 0.5)
            status, failed = "completed" if attempt == tries else "retrying", None
            if index == 13 and device.startswith("a1"):
                status, took = "skipped", 0.01
            if attempt == tries and failure is not None and failure[0] == index:
                status, failed = "failed", failure
            end: float | None = at + took
            if at + took > now - 60:
                status, end, failed = "running", None, None
            found.append(Attempt(index, spec.name, attempt, status, at, end, failed))
            at += took + 0.2
            if status in ("running", "failed"):
                return found
        if cancelled and index == 12:
            break
    return found


def generate(runs: int, days: float, now: float, seed: int = 42) -> Iterator[Run]:
    """Yield *runs* runs started at uniformly random times over the *days* before *now*."""
    rng = random.Random(seed)
    starts = sorted(rng.uniform(now - days * 86400, now) for _ in range(runs))
    for n, t in enumerate(starts):
        server = f"srv-{rng.randint(1, 60000):05d}"
        device = rng.choices([d for d, _ in DEVICES], [w for _, w in DEVICES])[0]
        ip = f"10.20.{rng.randint(1, 254)}.{rng.randint(10, 250)}"
        draw, failure = rng.random(), None
        for candidate in FAILURES:
            if draw < candidate[3]:
                failure = candidate
                break
            draw -= candidate[3]
        cancelled = failure is None and draw < CANCEL_RATE
        attempts = _attempts(rng, t, device, failure, cancelled, now)
        last = attempts[-1].status
        status = last if last in ("running", "failed") else "completed"
        status = "cancelled" if cancelled and status == "completed" else status
        yield Run(n, t, server, device, ip, status, attempts, rng.getrandbits(128))


def stamp(seconds: float | None) -> dt.datetime | None:
    """Epoch seconds as an aware UTC datetime."""
    return None if seconds is None else EPOCH + dt.timedelta(seconds=seconds)


def rows(run: Run) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    """The ``workflow_history`` row and the step rows of *run*, in RUN_COLS / STEP_COLS order."""
    hexed = f"{run.bits:032x}"
    run_id = f"{hexed[:8]}-{hexed[8:12]}-{hexed[12:16]}-{hexed[16:20]}-{hexed[20:]}"
    workflow = ("provision_server",) * 16 + ("rebuild_server",) * 3 + ("decommission_server",)
    name = workflow[run.n % 20]
    values = {"srv": run.server, "ip": run.ip, "ipmi": run.ip.replace("10.20", "10.30")}
    steps, summary, errors = [], {}, []
    for a in run.attempts:
        start, end = stamp(a.start), stamp(a.end)
        error = a.failure[2].format(**values) if a.failure else None
        error_type = a.failure[1] if a.failure else None
        stack = logs = None
        if a.failure:
            stack = STACK.format(n=a.index * 7, step=a.name, etype=error_type, msg=error)
            line = {"at": str(end), "severity": "warning", "logger": "maas", "message": error}
            logs = json.dumps([line])
            errors.append({"step": a.name, "type": error_type, "message": error})
        span = (run.bits >> 64) ^ (len(steps) * 0x9E3779B97F4A7C15) & (2**64 - 1)
        ms = None if a.end is None else int((a.end - a.start) * 1000)
        message = error or f"{a.name} done"
        steps.append(
            (run_id, f"{span:016x}", a.index, a.name, a.attempt, a.status, start, end, ms,
             message, error_type, error, stack, logs)
        )  # fmt: skip
        summary[a.index] = {
            "index": a.index, "name": a.name, "status": a.status, "attempts": a.attempt,
            "started_at": str(start), "completed_at": str(end), "error": error,
        }  # fmt: skip
    last = run.attempts[-1]
    end_s = last.end if run.status != "running" else None
    trace_id, span_id = f"{run.bits * 0x9E3779B97F4A7C15 % 2**128:032x}", f"{run.bits >> 64:016x}"
    metadata = {
        "workflow_name": name, "description": "Provision a bare-metal server",
        "current_step_name": last.name, "current_step_index": last.index,
        "steps": [summary.get(i, {"index": i, "name": spec.name, "status": "pending"})
                  for i, spec in enumerate(STEPS, start=1)],
        "context_data": {"server_id": run.server, "device_type": run.device, "server_ip": run.ip,
                         "ipmi_ip": values["ipmi"], "ipmi_password": "[REDACTED]"},
        "timestamps": {"started_at": str(stamp(run.start)), "completed_at": str(stamp(end_s))},
        "errors": errors,
        "trace": {"trace_id": trace_id, "span_id": span_id,
                  "traceparent": f"00-{trace_id}-{span_id}-01", "url": None},
    }  # fmt: skip
    failed = errors[-1] if run.status == "failed" else None
    error_message = failed and f"step '{last.name}' failed: {failed['type']}: {failed['message']}"
    updated = end_s or last.start
    done = sum(1 for s in summary.values() if s["status"] in ("completed", "skipped"))
    return (
        run_id, f"{name}_{run.server}", name, run.server, run.device, run.status,
        stamp(run.start), stamp(end_s), stamp(updated), done, len(STEPS), last.name,
        None if end_s is None else int((end_s - run.start) * 1000),
        failed["type"] if failed else None, error_message if failed else None,
        json.dumps(metadata), trace_id, span_id, "provisioner", f"worker-{run.n % 12}",
        1000 + run.n % 977, int(updated * 1_000_000),
    ), steps  # fmt: skip
