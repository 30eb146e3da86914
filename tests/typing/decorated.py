"""Checked by mypy --strict (tests/test_typing.py), never imported: what the decorators keep.

Each ``assert_type`` pins what a decorated function returns, sync and async, bare and with
options, and each Protocol assignment pins its parameters; the ``type: ignore[...]`` lines must
stay errors (strict mode's ``warn_unused_ignores`` fails the check if a wrong call stops being
one), so a decorator that loses its signature to ``Callable[..., Any]`` fails the test.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Protocol, assert_type

from instrumentation import step, workflow


@step
def configure_bios(server: str, retries: int = 3) -> bool:
    return bool(server) and retries > 0


@step(name="wipe disks", description="erase every disk")
async def wipe(server: str, *, disks: list[str]) -> int:
    return len(disks)


@workflow
def provision(server: str) -> bool:
    return configure_bios(server)


@workflow(name="rack", total_steps=2)
async def rack(rack_id: int) -> list[str]:
    return [str(rack_id)]


class ConfiguresBios(Protocol):
    def __call__(self, server: str, retries: int = ...) -> bool: ...


class Wipes(Protocol):
    def __call__(self, server: str, *, disks: list[str]) -> Coroutine[Any, Any, int]: ...


bios_signature: ConfiguresBios = configure_bios
wipe_signature: Wipes = wipe

assert_type(configure_bios("srv-1"), bool)
assert_type(configure_bios("srv-1", retries=2), bool)
assert_type(provision("srv-1"), bool)
pending = [
    assert_type(wipe("srv-1", disks=["sda"]), Coroutine[Any, Any, int]),
    assert_type(rack(7), Coroutine[Any, Any, list[str]]),
]

configure_bios(1)  # type: ignore[arg-type]
provision()  # type: ignore[call-arg]
positional_disks = wipe("srv-1", ["sda"])  # type: ignore[call-arg]
wrong_rack = rack("7")  # type: ignore[arg-type]
