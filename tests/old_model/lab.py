"""A simulated lab the provisioning steps talk to: MaaS, DNS, BMCs, firmware (no I/O at all).

Each flag scripts one of the ways a real provisioning run goes wrong, so a test chooses the
outcome: a machine already commissioned (steps jump ahead), firmware already current (a step is
skipped), a BMC that is not ready for a few checks (a step is retried), a disk with SMART
warnings (a step fails and the run goes on), a BIOS setting that did not apply (the run
fails), a BMC that refuses the session (a step raises). Addresses are documentation values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Lab"]


@dataclass
class Lab:
    """The scripted outcomes, and what the steps did (``calls``, ``released``)."""

    already_commissioned: bool = False
    firmware_current: bool = False
    ipmi_not_ready: int = 0
    disk_warning: bool = False
    bios_mismatch: bool = False
    bmc_refuses: bool = False
    retry_delay: float = 0.0
    calls: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)

    def do(self, action: str) -> None:
        """Record that a step performed *action*."""
        self.calls.append(action)

    def address(self, server_id: str, network: str) -> str:
        """A stable documentation address (192.0.2.0/24, 198.51.100.0/24) for a server."""
        host = sum(server_id.encode()) % 200 + 10
        prefix = "192.0.2" if network == "data" else "198.51.100"
        return f"{prefix}.{host}"

    def release(self, machine_id: str) -> None:
        """Give a machine back to the pool (what ``cleanup`` does after a failed run)."""
        self.released.append(machine_id)
