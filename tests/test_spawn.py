"""Tests stop what they start: a child is reaped whatever the test's outcome (tests/spawn.py).

A small suite runs in its own pytest process (``pytester``) with this repository's conftest,
so its wiring is what is tested. Its tests start real children the way the end-to-end tests do
(``flowtel ingest`` through :class:`tests.collector_support.Ingest`, a process that starts a
grandchild) and then raise, skip half-way — the collector missing, as under .ci/newest.sh,
which once left two ``flowtel ingest`` processes running for an hour — or fail an assertion.
Each child writes its pid to a file; the suite's last test finds none of them alive (each was
stopped when its own test ended), and once that pytest process has exited none is either.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from tests.collector_support import ROOT

pytest_plugins = ["pytester"]

SUITE = '''
import subprocess, sys
from pathlib import Path

import pytest

from tests.collector_support import Ingest, IngestCollector, free_ports
from tests.spawn import spawn

PIDS = Path({pids!r})
SLEEPER = "import time; time.sleep(600)"
PARENT = (
    "import subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print(child.pid, flush=True); time.sleep(600)"
)


def note(name, pid):
    (PIDS / f"{{name}}-{{pid}}").write_text(str(pid))


def test_body_raises():
    note("raises", spawn([sys.executable, "-c", SLEEPER]).pid)
    raise RuntimeError("the test body fails half-way")


def test_ingest_then_the_collector_is_missing_and_the_test_skips(tmp_path):
    (port,) = free_ports(1)
    ingest = Ingest(f"sqlite:///{{tmp_path}}/h.db", port, tmp_path).start()
    note("ingest", ingest.process.pid)
    IngestCollector(tmp_path, port).start()  # FLOWTEL_OTELCOL is unset: skips here


def test_grandchild_and_a_failed_assertion():
    parent = spawn([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    note("parent", parent.pid)
    note("grandchild", int(parent.stdout.readline()))
    assert 1 == 2


def test_zz_the_children_of_the_tests_before_are_gone_already():
    def alive(pid):
        try:
            with open(f"/proc/{{pid}}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    pids = [int(p.read_text()) for p in PIDS.iterdir()]
    assert len(pids) == 4 and [pid for pid in pids if alive(pid)] == []
'''


def alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie waiting for its parent counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_children_are_reaped_when_the_test_raises_skips_or_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    pytester.makeconftest("from tests.conftest import *  # noqa: F403 - this repository's\n")
    pytester.makepyfile(test_inner=SUITE.format(pids=str(pids)))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    for name in ("FLOWTEL_OTELCOL", "FLOWTEL_REQUIRE_SERVICES", "CI"):
        monkeypatch.delenv(name, raising=False)
    started: list[int] = []
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=120)
        started = [int(p.read_text()) for p in pids.iterdir()]
        result.assert_outcomes(passed=1, failed=2, skipped=1)
        kinds = sorted(p.name.split("-")[0] for p in pids.iterdir())
        assert kinds == ["grandchild", "ingest", "parent", "raises"]
        assert [pid for pid in started if alive(pid)] == []
    finally:
        for pid in started:  # this test leaves nothing behind either, whatever it found
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
