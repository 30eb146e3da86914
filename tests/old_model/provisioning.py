"""The 23-step bare-metal provisioning workflow, written against the old engine (a fixture).

MaaS commissioning, network, hardware discovery, IPMI, BIOS and final validation, as the old
system's workflow module looked: step classes with ``execute(context)`` returning a
``StepExecutionResult``, prerequisites, retries, a jump with ``next_step``, and a workflow
class with ``validate_prerequisites`` and ``cleanup``. ``tests/old_model/ported.py`` is this
file with only its imports and base classes changed; a test compares the two line by line.
"""

# ruff: noqa: UP006, UP035  (the old code's typing style, kept as it was)

from typing import List

from tests.old_model.engine import BaseWorkflow, StepContext, StepExecutionResult, WorkflowStep
from tests.old_model.lab import Lab


class LabStep(WorkflowStep):
    def __init__(self, lab: Lab, name, description, done, max_retries=0):
        super().__init__(name, description, max_retries, lab.retry_delay)
        self.lab = lab
        self.done = done

    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        return StepExecutionResult.success(self.done.format(**vars(context)))


class SelectMachineStep(LabStep):
    def validate_prerequisites(self, context: StepContext) -> bool:
        return bool(context.device_type)

    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        machine_id = f"maas-{context.server_id}"
        jump = "configure_network" if self.lab.already_commissioned else None
        return StepExecutionResult.success(
            f"picked {machine_id}", data={"machine_id": machine_id}, next_step=jump
        )


class ConfigureNetworkStep(LabStep):
    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        context.server_ip = self.lab.address(context.server_id, "data")
        context.gateway = context.server_ip.rsplit(".", 1)[0] + ".1"
        return StepExecutionResult.success(f"{context.server_ip}/24 via {context.gateway}")


class CheckDiskHealthStep(LabStep):
    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        if self.lab.disk_warning:
            return StepExecutionResult.failure(
                "SMART warning on /dev/sdb: 8 reallocated sectors", should_continue=True
            )
        return StepExecutionResult.success("all disks healthy")


class UpdateFirmwareStep(LabStep):
    def execute(self, context: StepContext) -> StepExecutionResult:
        if self.lab.firmware_current:
            return StepExecutionResult.skip("firmware already at baseline 2.4.1")
        self.lab.do(self.name)
        return StepExecutionResult.success("firmware updated to 2.4.1")


class ConfigureIpmiNetworkStep(LabStep):
    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        context.ipmi_ip = self.lab.address(context.server_id, "ipmi")
        return StepExecutionResult.success(f"BMC at {context.ipmi_ip}")


class SetIpmiCredentialsStep(LabStep):
    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        if self.lab.bmc_refuses:
            raise ConnectionError(f"BMC at {context.ipmi_ip} refused the session")
        return StepExecutionResult.success("provisioning account set")


class VerifyIpmiAccessStep(LabStep):
    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        if self.lab.ipmi_not_ready > 0:
            self.lab.ipmi_not_ready -= 1
            return StepExecutionResult.retry(f"BMC at {context.ipmi_ip} not answering yet")
        return StepExecutionResult.success("chassis status ok")


class VerifyBiosSettingsStep(LabStep):
    def execute(self, context: StepContext) -> StepExecutionResult:
        self.lab.do(self.name)
        if self.lab.bios_mismatch:
            return StepExecutionResult.failure("BIOS setting SR-IOV is Disabled, expected Enabled")
        return StepExecutionResult.success("12/12 settings applied")


class ProvisionServerWorkflow(BaseWorkflow):
    def __init__(self, lab: Lab):
        super().__init__("provision_server", "Provision a bare-metal server end to end")
        self.lab = lab
        self.steps: List[LabStep] = [
            SelectMachineStep(lab, "select_machine", "Find the machine in MaaS", ""),
            LabStep(lab, "allocate_machine", "Allocate it to this job", "allocated"),
            LabStep(lab, "commission_machine", "Start commissioning", "4 scripts started"),
            LabStep(lab, "wait_for_commissioning", "Wait for Ready", "{server_id} is Ready"),
            LabStep(lab, "verify_commissioning_results", "Check the scripts", "4/4 passed"),
            ConfigureNetworkStep(lab, "configure_network", "Bond, VLAN and address", ""),
            LabStep(lab, "configure_dns", "Forward and reverse records", "A and PTR added"),
            LabStep(lab, "verify_connectivity", "Ping the gateway", "{gateway} reachable"),
            LabStep(lab, "verify_ssh_access", "Log in with the key", "ssh {server_ip} ok"),
            LabStep(lab, "discover_hardware", "Collect the inventory", "inventory collected"),
            LabStep(lab, "validate_hardware_inventory", "Compare with spec", "{device_type}"),
            CheckDiskHealthStep(lab, "check_disk_health", "Read SMART data", ""),
            UpdateFirmwareStep(lab, "update_firmware", "Bring firmware to baseline", ""),
            ConfigureIpmiNetworkStep(lab, "configure_ipmi_network", "Address the BMC", ""),
            SetIpmiCredentialsStep(lab, "set_ipmi_credentials", "Provisioning account", ""),
            VerifyIpmiAccessStep(lab, "verify_ipmi_access", "Query the BMC", "", max_retries=3),
            LabStep(lab, "enable_serial_over_lan", "Enable SOL", "SOL enabled"),
            LabStep(lab, "apply_bios_settings", "Push the BIOS profile", "profile pushed"),
            VerifyBiosSettingsStep(lab, "verify_bios_settings", "Read the settings back", ""),
            LabStep(lab, "configure_boot_order", "PXE then disk", "boot order set"),
            LabStep(lab, "run_burn_in", "Stress CPU and memory", "burn-in passed"),
            LabStep(lab, "register_in_inventory", "Record in the CMDB", "registered"),
            LabStep(lab, "mark_ready", "Hand over to the tenant", "{server_id} ready"),
        ]

    def validate_prerequisites(self, context: StepContext) -> bool:
        if not context.server_id:
            context.errors.append("no server_id given")
            return False
        return True

    def cleanup(self, context: StepContext) -> None:
        if context.errors and "machine_id" in context.data:
            self.lab.release(context.data["machine_id"])
