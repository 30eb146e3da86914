"""Child processes of the tests: each in its own process group, and always stopped.

:func:`spawn` starts a process as :class:`subprocess.Popen` does, but in a new session (so its
own process group: whatever it starts in turn is stopped with it) and records it. The autouse
fixture :func:`reap_spawned` (registered in tests/conftest.py) stops, after every test and
whatever its outcome — passed, failed, errored or skipped half-way — every group spawned during
that test that is still alive: SIGTERM, then SIGKILL after a grace period. Processes spawned
outside a test (a module- or session-scoped fixture) are stopped when the test session exits.
:func:`stop` is the graceful stop a test asks for itself, :func:`kill_group` the crash it
simulates. ``.ci/run`` checks at the end that no flowtel child outlived the run.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

__all__ = ["kill_group", "reap", "reap_spawned", "spawn", "spawned", "stop"]

_SPAWNED: list[subprocess.Popen[Any]] = []


def spawn(argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """Start *argv* in its own process group (``Popen`` *options*), recorded for reaping."""
    process: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **options)
    _SPAWNED.append(process)
    return process


def spawned() -> list[subprocess.Popen[Any]]:
    """Every process :func:`spawn` started in this test session, oldest first."""
    return list(_SPAWNED)


def _signal_group(process: subprocess.Popen[Any], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)  # the group's id is the leader's pid (new session)


def _running_groups() -> set[int]:
    """The process groups with a member that still runs (zombies, already dead, don't count)."""
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                state, _parent, group = stat.read().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state not in ("Z", "X"):
            groups.add(int(group))
    return groups


def _kill_and_wait(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGKILL the group and return once none of it runs any more, or after *timeout* s (a kill
    is asynchronous: a loaded machine may take a moment to schedule the victims' exit)."""
    deadline = time.monotonic() + timeout
    while True:
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(0.1)
        gone = process.returncode is not None and process.pid not in _running_groups()
        if gone or time.monotonic() > deadline:
            return
        time.sleep(0.05)


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL *process* and everything in its group (a crash), and collect its status."""
    _kill_and_wait(process)


def stop(process: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """SIGTERM *process*, wait up to *timeout* s, then SIGKILL its group; its exit status.

    The rest of its group is SIGKILLed too once it has exited (nothing it started outlives it).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    _kill_and_wait(process)
    return int(process.returncode)


def reap(processes: Sequence[subprocess.Popen[Any]], grace: float = 5.0) -> list[int]:
    """Stop every group in *processes* still alive (SIGTERM, *grace* s, SIGKILL); the pids of
    those that were still running."""
    running = _running_groups()
    alive = [p for p in processes if p.poll() is None or p.pid in running]
    for process in alive:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in alive:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(max(0.0, deadline - time.monotonic()))
        _kill_and_wait(process)
    return [p.pid for p in alive]


@pytest.fixture(autouse=True)
def reap_spawned() -> Iterator[None]:
    """After each test, whatever its outcome, stop every process group it spawned."""
    first = len(_SPAWNED)
    yield
    reap(_SPAWNED[first:])


@atexit.register
def _reap_at_exit() -> None:
    reap(_SPAWNED, grace=2.0)
