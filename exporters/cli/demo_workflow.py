"""A simulated 23-step bare-metal provisioning workflow that fills the history with runs.

Six phases (MaaS commissioning, network, hardware discovery, IPMI, BIOS, final validation) are
written with flowtel's own ``workflow_run``/``run.step`` API. One ``random.Random(seed)`` plans
every run, so a seed always gives the same servers and outcomes: commissioning timeouts, an
unreachable BMC, a BIOS setting that did not apply, a retried IPMI check, a skipped firmware
update. Steps only sleep ``step_delay`` seconds (times a weight); no hardware is touched.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from opentelemetry.trace import TracerProvider

from instrumentation import RunScope, RunStatus, StepRun, StepStatus, WorkflowRun, workflow_run

__all__ = [
    "DEVICE_TYPES",
    "STEPS",
    "WORKFLOW_NAME",
    "BiosVerificationError",
    "DemoSummary",
    "Failure",
    "RunOutcome",
    "RunPlan",
    "StepSpec",
    "plan_runs",
    "provision_server",
    "provisioning_run",
    "run_demo",
]

WORKFLOW_NAME = "provision_server"
Failure = Literal["commissioning_timeout", "ipmi_unreachable", "bios_mismatch"]
_FAILURES: tuple[Failure, ...] = ("commissioning_timeout", "ipmi_unreachable", "bios_mismatch")

DEVICE_TYPES = ("s2_c2_small", "s2_c4_medium", "a1_c5_large", "a1_c8_xlarge", "g1_c4_gpu")
_BASELINE_FIRMWARE = frozenset({"a1_c5_large", "a1_c8_xlarge"})  # no firmware update needed

_IPMI_RETRY_RATE = 0.25
_REPROVISION_RATE = 0.5
logger = logging.getLogger("flowtel.demo")
logger.addHandler(logging.NullHandler())


@dataclasses.dataclass(frozen=True, slots=True)
class StepSpec:
    """One step of the workflow: its phase, name, description, done message and weight."""

    phase: str
    name: str
    description: str
    done: str
    weight: float = 1.0


_PHASES: dict[str, tuple[tuple[Any, ...], ...]] = {
    "maas": (
        ("select_machine", "Pick a Ready machine of the device type", "picked {server_id}"),
        ("allocate_machine", "Allocate the machine to this job in MaaS", "allocated {server_id}"),
        ("commission_machine", "Start commissioning with hardware tests", "4 scripts started"),
        ("wait_for_commissioning", "Wait for MaaS to report Ready", "{server_id} is Ready", 4.0),
        ("verify_commissioning_results", "Check the commissioning scripts", "4/4 scripts passed"),
    ),
    "network": (
        ("configure_network", "Apply bond, VLAN and address", "{server_ip}/24 via {gateway}"),
        ("configure_dns", "Register forward and reverse DNS records", "A and PTR records added"),
        ("verify_connectivity", "Ping the gateway and region controller", "{gateway} reachable"),
        ("verify_ssh_access", "Log in with the provisioning key", "ssh ubuntu@{server_ip} ok"),
    ),
    "hardware": (
        ("discover_hardware", "Collect CPU, memory, disk and NIC inventory", "inventory collected"),
        ("validate_hardware_inventory", "Compare with the device spec", "matches {device_type}"),
        ("check_disk_health", "Read the SMART status of every disk", "all disks SMART PASSED"),
        ("update_firmware", "Bring NIC and BMC firmware to baseline", "firmware updated", 2.0),
    ),
    "ipmi": (
        ("discover_ipmi_address", "Find the BMC from its DHCP lease", "BMC found at {ipmi_ip}"),
        ("configure_ipmi", "Set the BMC's static address and user", "BMC set to {ipmi_ip}"),
        ("verify_ipmi_reachable", "Reach the BMC over IPMI-over-LAN", "{ipmi_ip} answers"),
        ("register_bmc_in_maas", "Record the BMC power parameters in MaaS", "power type ipmi"),
    ),
    "bios": (
        ("push_bios_settings", "Apply the BIOS profile over Redfish", "profile {device_type}"),
        ("reboot_to_apply_bios", "Power-cycle so the settings apply", "power cycle done", 2.0),
        ("verify_bios_settings", "Read settings back and compare", "all settings match"),
    ),
    "validation": (
        ("run_burn_in_tests", "Short CPU and memory stress run", "burn-in passed", 3.0),
        ("validate_final_state", "Check power, network, IPMI and BIOS", "final state valid"),
        ("mark_server_ready", "Tag the server ready in MaaS", "{server_id} ready for deploy"),
    ),
}

STEPS: tuple[StepSpec, ...] = tuple(
    StepSpec(phase, *fields) for phase, steps in _PHASES.items() for fields in steps
)
"""The 23 steps of ``provision_server``, in order."""


class BiosVerificationError(RuntimeError):
    """A BIOS setting read back after the reboot differs from the device type's profile."""

    def __init__(self, setting: str, expected: str, actual: str) -> None:
        self.setting, self.expected, self.actual = setting, expected, actual
        super().__init__(f"BIOS setting {setting!r} is {actual!r}, expected {expected!r}")


@dataclasses.dataclass(frozen=True, slots=True)
class RunPlan:
    """What one simulated run will do; :func:`plan_runs` draws these from the seed."""

    server_id: str
    device_type: str
    server_ip: str
    ipmi_ip: str
    gateway: str
    ipmi_password: str
    failure: Failure | None = None
    ipmi_retry: bool = False

    @property
    def workflow_id(self) -> str:
        """The logical id: ``provision_<server_id>``."""
        return f"provision_{self.server_id}"

    def context(self) -> dict[str, Any]:
        """The run's context: every field up to ``ipmi_password`` (which flowtel redacts)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[:6]}


@dataclasses.dataclass(frozen=True, slots=True)
class RunOutcome:
    """How one run ended; passed to ``on_progress`` after each run."""

    index: int
    run_id: str
    workflow_id: str
    server_id: str
    status: str
    failed_step: str | None = None
    error_type: str | None = None
    error_message: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DemoSummary:
    """Totals of a :func:`run_demo` call; ``failures`` counts failed runs by error type."""

    runs: int
    completed: int
    failed: int
    failures: dict[str, int]
    failed_run_ids: list[str]
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        """Return the summary as a JSON-ready dictionary."""
        return dataclasses.asdict(self)


def _new_server(rng: random.Random, failure_rate: float) -> RunPlan:
    subnet = rng.randint(1, 254)
    host = rng.randint(10, 250)
    failure = rng.choice(_FAILURES) if rng.random() < failure_rate else None
    return RunPlan(
        server_id=f"srv-{rng.randint(1, 9999):04d}",
        device_type=rng.choice(DEVICE_TYPES),
        server_ip=f"10.20.{subnet}.{host}",
        ipmi_ip=f"10.30.{subnet}.{host}",
        gateway=f"10.20.{subnet}.1",
        ipmi_password="".join(rng.choices("abcdefghjkmnpqrstuvwxyz23456789", k=16)),
        failure=failure,
        ipmi_retry=failure == "ipmi_unreachable" or rng.random() < _IPMI_RETRY_RATE,
    )


def plan_runs(runs: int, seed: int, failure_rate: float) -> list[RunPlan]:
    """Draw *runs* run plans from ``random.Random(seed)``; a failed server is often re-run.

    Raises:
        ValueError: *runs* is negative or *failure_rate* is outside 0..1.
    """
    if runs < 0:
        raise ValueError(f"runs must be zero or more, not {runs}")
    if not 0.0 <= failure_rate <= 1.0:
        raise ValueError(f"failure_rate must be between 0 and 1, not {failure_rate}")
    rng = random.Random(seed)
    plans: list[RunPlan] = []
    for _ in range(runs):
        plan = _new_server(rng, failure_rate)
        previous = plans[-1] if plans else None
        if previous is not None and previous.failure and rng.random() < _REPROVISION_RATE:
            plan = dataclasses.replace(previous, failure=plan.failure, ipmi_retry=plan.ipmi_retry)
        plans.append(plan)
    return plans


def _fail(step: StepRun, exc: Exception) -> None:
    logger.warning("%s failed on %s: %s", step.name, step.run.context.get("server_id"), exc)
    raise exc


def _act(step: StepRun, plan: RunPlan) -> None:
    """The simulated work of one step attempt that can go wrong (others just succeed)."""
    if step.name == "wait_for_commissioning" and plan.failure == "commissioning_timeout":
        _fail(step, TimeoutError(f"{plan.server_id} still 'Commissioning' after 1800 s"))
    elif step.name == "update_firmware" and plan.device_type in _BASELINE_FIRMWARE:
        step.skip(f"{plan.device_type} ships with baseline firmware")
    elif step.name == "verify_ipmi_reachable" and step.attempt == 1 and plan.ipmi_retry:
        step.retrying(f"no answer from {plan.ipmi_ip} on UDP 623; retrying")
    elif step.name == "verify_ipmi_reachable" and plan.failure == "ipmi_unreachable":
        _fail(step, ConnectionError(f"IPMI address {plan.ipmi_ip} unreachable: no answer in 3 s"))
    elif step.name == "verify_bios_settings" and plan.failure == "bios_mismatch":
        _fail(step, BiosVerificationError("SR-IOV Support", "Enabled", "Disabled"))


def provisioning_run(plan: RunPlan, *, tracer_provider: TracerProvider | None = None) -> RunScope:
    """Return the ``workflow_run`` scope of one provisioning of *plan*'s server."""
    return workflow_run(
        WORKFLOW_NAME,
        workflow_id=plan.workflow_id,
        context=plan.context(),
        total_steps=len(STEPS),
        description="Provision a bare-metal server: commission, network, IPMI, BIOS, validate",
        declared_steps=[spec.name for spec in STEPS],
        tracer_provider=tracer_provider,
    )


def provision_server(run: WorkflowRun, plan: RunPlan, *, step_delay: float = 0.0) -> None:
    """Run the 23 simulated steps of *plan* inside *run*.

    Raises:
        TimeoutError, ConnectionError, BiosVerificationError: the planned failure, unchanged
            after flowtel recorded it on the step.
    """
    values = {**plan.context(), "workflow_id": plan.workflow_id}
    for spec in STEPS:
        for _attempt in range(2):
            with run.step(spec.name, description=spec.description) as step:
                if step_delay > 0:
                    time.sleep(step_delay * spec.weight)
                _act(step, plan)
                step.set_message(spec.done.format(**values))
            if step.status != StepStatus.RETRYING:
                break


def run_demo(
    runs: int = 20,
    seed: int = 7,
    failure_rate: float = 0.15,
    step_delay: float = 0.005,
    on_progress: Callable[[RunOutcome], None] | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
) -> DemoSummary:
    """Run *runs* simulated provisioning workflows and count how they ended.

    Args:
        runs: how many runs to record.
        seed: seeds the plan: the same seed gives the same servers and outcomes.
        failure_rate: the probability that a run fails (0..1).
        step_delay: seconds each step sleeps (times its weight); 0 for none.
        on_progress: called with each run's :class:`RunOutcome` as it ends.
        tracer_provider: the provider to record with (default: the global one).

    Raises:
        ValueError: an argument is out of range.
    """
    if step_delay < 0:
        raise ValueError(f"step_delay must be zero or more, not {step_delay}")
    start = time.perf_counter()
    outcomes: list[RunOutcome] = []
    for index, plan in enumerate(plan_runs(runs, seed, failure_rate), start=1):
        run: WorkflowRun | None = None
        error: Exception | None = None
        try:
            with provisioning_run(plan, tracer_provider=tracer_provider) as run:
                provision_server(run, plan, step_delay=step_delay)
        except Exception as exc:  # flowtel recorded the run as failed: count it and go on
            error = exc
        outcome = RunOutcome(
            index=index,
            run_id=run.run_id if run is not None else "",
            workflow_id=plan.workflow_id,
            server_id=plan.server_id,
            status=run.status.value if run is not None else RunStatus.FAILED.value,
            failed_step=run.failed_step if run is not None else None,
            error_type=type(error).__name__ if error is not None else None,
            error_message=str(error) if error is not None else None,
        )
        outcomes.append(outcome)
        if on_progress is not None:
            on_progress(outcome)
    failed = [o for o in outcomes if o.status != RunStatus.COMPLETED]
    return DemoSummary(
        runs=len(outcomes),
        completed=len(outcomes) - len(failed),
        failed=len(failed),
        failures=dict(Counter(o.error_type or o.status for o in failed)),
        failed_run_ids=[o.run_id for o in failed],
        elapsed_s=round(time.perf_counter() - start, 3),
    )
