"""The context manager, the decorators and the class API, sync and async, write the same rows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from instrumentation import step, workflow, workflow_run
from instrumentation.engine import Step, StepContext, StepResult, Workflow
from tests.conftest import History

NAMES = ("select_machine", "configure_network", "configure_bios")
CONTEXT = {"server_id": "srv-7", "device_type": "s2_c2_small"}


class Broken(RuntimeError):
    """Raised by the failing variant's last step."""


def context_manager_sync(fail: bool) -> None:
    with workflow_run(
        "provision_server", workflow_id="provision_srv-7", context=CONTEXT, total_steps=3
    ) as run:
        for name in NAMES:
            with run.step(name):
                if fail and name == NAMES[-1]:
                    raise Broken("bios did not verify")


async def context_manager_async(fail: bool) -> None:
    async with workflow_run(
        "provision_server", workflow_id="provision_srv-7", context=CONTEXT, total_steps=3
    ) as run:
        for name in NAMES:
            async with run.step(name):
                await asyncio.sleep(0)
                if fail and name == NAMES[-1]:
                    raise Broken("bios did not verify")


def decorators_sync(fail: bool) -> None:
    @step(name=NAMES[0])
    def first() -> None: ...

    @step(name=NAMES[1])
    def second() -> None: ...

    @step(name=NAMES[2])
    def third() -> None:
        if fail:
            raise Broken("bios did not verify")

    @workflow(
        name="provision_server",
        workflow_id=lambda server: f"provision_{server}",
        context=lambda server: {**CONTEXT, "server_id": server},
        total_steps=3,
    )
    def provision(server: str) -> None:
        first()
        second()
        third()

    provision("srv-7")


async def decorators_async(fail: bool) -> None:
    @step(name=NAMES[0])
    async def first() -> None: ...

    @step(name=NAMES[1])
    async def second() -> None: ...

    @step(name=NAMES[2])
    async def third() -> None:
        if fail:
            raise Broken("bios did not verify")

    @workflow(
        name="provision_server",
        workflow_id=lambda server: f"provision_{server}",
        context=lambda server: {**CONTEXT, "server_id": server},
        total_steps=3,
    )
    async def provision(server: str) -> None:
        await first()
        await second()
        await third()

    await provision("srv-7")


def _workflow(fail: bool, asynchronous: bool) -> Workflow:
    def make(name: str) -> Step:
        def body(context: StepContext) -> StepResult:
            if fail and name == NAMES[-1]:
                raise Broken("bios did not verify")
            return StepResult.success()

        async def async_body(context: StepContext) -> StepResult:
            return body(context)

        return Step.from_function(async_body if asynchronous else body, name=name)

    return Workflow("provision_server", steps=[make(n) for n in NAMES])


def class_sync(fail: bool) -> None:
    _workflow(fail, False).run(StepContext(workflow_id="provision_srv-7", **CONTEXT))


async def class_async(fail: bool) -> None:
    await _workflow(fail, True).arun(StepContext(workflow_id="provision_srv-7", **CONTEXT))


VARIANTS: dict[str, Callable[[bool], Any]] = {
    "context_manager_sync": context_manager_sync,
    "context_manager_async": context_manager_async,
    "decorators_sync": decorators_sync,
    "decorators_async": decorators_async,
    "class_sync": class_sync,
    "class_async": class_async,
}


def _run(variant: str, fail: bool) -> None:
    result = VARIANTS[variant](fail)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


def _shape(history: History) -> tuple[Any, ...]:
    (row,) = history.runs()
    steps = history.steps(row.run_id)
    return (
        row.workflow_id,
        row.workflow_name,
        row.server_id,
        row.device_type,
        row.status,
        row.steps_completed,
        row.total_steps,
        row.current_step,
        row.error_type,
        [(s.step_index, s.step_name, s.attempt, s.status, s.error_type) for s in steps],
    )


EXPECTED_OK = (
    "provision_srv-7",
    "provision_server",
    "srv-7",
    "s2_c2_small",
    "completed",
    3,
    3,
    "configure_bios",
    None,
    [(i, n, 1, "completed", None) for i, n in enumerate(NAMES, start=1)],
)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_api_records_the_same_successful_run(history: History, variant: str) -> None:
    """A successful three-step run leaves identical rows whichever API wrote it."""
    _run(variant, fail=False)
    history.flush()
    assert _shape(history) == EXPECTED_OK


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_api_records_the_same_failed_run(history: History, variant: str) -> None:
    """A run whose last step raises is failed the same way whichever API wrote it."""
    with pytest.raises(Broken):
        _run(variant, fail=True)
    history.flush()
    error = "tests.test_three_apis.Broken"
    assert _shape(history) == (
        *EXPECTED_OK[:4],
        "failed",
        2,
        3,
        "configure_bios",
        error,
        [
            (1, NAMES[0], 1, "completed", None),
            (2, NAMES[1], 1, "completed", None),
            (3, NAMES[2], 1, "failed", error),
        ],
    )
