"""Programs the fault tests run as child processes: ``python -m tests.children COMMAND ...``.

Each builds its own tracer provider and history processor (never the test session's global
one), does its part, and reports on stdout as JSON lines: ``crash`` and ``sigterm`` print
``ready`` with a run still open and then wait to be killed; ``fork`` forks (``os.fork`` or
``multiprocessing``) while its own writer is busy; ``writers`` runs threads of workflows;
``replay`` is a process restarting (it replays the spool as ``configure()`` does); ``memory``
measures resident memory while 100,000 events go to a database that does not answer.
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from exporters import WorkflowHistorySpanProcessor, make_engine
from exporters.spool.replay import replay_spool
from exporters.telemetry.signals import install_sigterm_handler
from instrumentation import workflow_run

STEPS = ("select", "configure", "deploy")


def report(**values: Any) -> None:
    print(json.dumps(values, default=str), flush=True)


def recorder(url: str, **options: Any) -> tuple[WorkflowHistorySpanProcessor, TracerProvider]:
    processor = WorkflowHistorySpanProcessor(make_engine(url), **options)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    return processor, provider


def provision(provider: TracerProvider, workflow_id: str, steps: tuple[str, ...] = STEPS) -> None:
    with workflow_run("provision_server", workflow_id=workflow_id, tracer_provider=provider) as run:
        for name in steps:
            with run.step(name):
                pass


def hang_in_a_step(provider: TracerProvider, processor: WorkflowHistorySpanProcessor) -> None:
    """Open a run, make it visible (or spooled), say ``ready``, then wait to be killed."""
    with (
        workflow_run("provision_server", workflow_id="hanging", tracer_provider=provider) as run,
        run.step("wait_forever"),
    ):
        flushed = processor.force_flush(5_000)
        report(ready=True, pid=os.getpid(), run_id=run.run_id, flushed=flushed, **processor.stats)
        while True:
            time.sleep(0.05)


def crash(args: argparse.Namespace) -> None:
    processor, provider = recorder(args.url, heartbeat_interval=0.2)
    for n in range(args.runs):
        provision(provider, f"provision_srv-{n}")
    hang_in_a_step(provider, processor)


def sigterm(args: argparse.Namespace) -> None:
    processor, provider = recorder(args.url)
    atexit.register(processor.shutdown, 5_000)  # what configure() registers
    install_sigterm_handler(processor, timeout_millis=2_000)
    for n in range(args.runs):
        provision(provider, f"provision_srv-{n}")
    hang_in_a_step(provider, processor)


def _keep_recording(provider: TracerProvider, stop: threading.Event, done: list[str]) -> None:
    while not stop.is_set():
        name = f"parent-{len(done)}"
        provision(provider, name)
        done.append(name)


def _child_work(provider: TracerProvider, processor: WorkflowHistorySpanProcessor, tag: str) -> int:
    for n in range(5):
        provision(provider, f"child-{tag}-{n}")
    return 0 if processor.force_flush(20_000) else 3  # forked children never run atexit


_FORKED: dict[str, Any] = {}


def _mp_target(tag: str) -> None:
    code = _child_work(_FORKED["provider"], _FORKED["processor"], tag)
    sys.exit(code)


def fork(args: argparse.Namespace) -> None:
    processor, provider = recorder(args.url)
    assert processor.force_flush(10_000)  # the schema exists before anyone forks
    _FORKED.update(processor=processor, provider=provider)
    stop, done = threading.Event(), []
    background = threading.Thread(target=_keep_recording, args=(provider, stop, done))
    background.start()
    while len(done) < 20:
        time.sleep(0.005)
    children: dict[str, int | None] = {}
    if args.mode == "os":
        pid = os.fork()
        if pid == 0:
            code = 4
            try:
                code = _child_work(provider, processor, "os")
            finally:
                os._exit(code)
        children[str(pid)] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    else:
        context = multiprocessing.get_context("fork")
        procs = [context.Process(target=_mp_target, args=(f"mp{k}",)) for k in range(2)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
            children[str(proc.pid)] = proc.exitcode
    produced_after_fork = len(done)
    while len(done) < produced_after_fork + 20:  # the parent's writer keeps working
        time.sleep(0.005)
    stop.set()
    background.join()
    flushed = processor.force_flush(20_000)
    report(parent=os.getpid(), children=children, parent_runs=len(done), flushed=flushed,
           writer_alive=processor.writer.alive, **processor.stats)  # fmt: skip
    processor.shutdown(5_000)


def writers(args: argparse.Namespace) -> None:
    processor, provider = recorder(args.url)
    report(started=os.getpid())
    errors: list[str] = []

    def work(thread: int) -> None:
        try:
            for n in range(args.runs):
                provision(provider, f"{args.prefix}-{thread}-{n}")
        except Exception as exc:  # pragma: no cover - reported
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report(produced=args.threads * args.runs)
    flushed = processor.force_flush(60_000)
    report(flushed=flushed, errors=errors, **processor.stats)
    processor.shutdown(5_000)


def replay(args: argparse.Namespace) -> None:
    report(**replay_spool(make_engine(args.url)).to_json())


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)  # pragma: no cover - Linux only


def memory(args: argparse.Namespace) -> None:
    """Record *events* events with the database down; report RSS growth and counters."""
    processor, provider = recorder(args.url, spool=not args.no_spool, max_pending_steps=10**9)
    steps = tuple(f"step_{n:02d}" for n in range(24))  # 50 events per workflow
    for n in range(50):  # warm up: imports, caches, first spool file
        provision(provider, f"warmup-{n}", steps)
    processor.force_flush(5_000)
    before, peak_before = _rss_kib("VmRSS"), _rss_kib("VmHWM")
    for n in range(args.events // 50):
        provision(provider, f"provision_srv-{n}", steps)
    processor.force_flush(30_000)
    report(
        rss_growth_kib=_rss_kib("VmRSS") - before,
        peak_growth_kib=_rss_kib("VmHWM") - max(before, peak_before),
        **processor.stats,
    )
    processor.shutdown(30_000)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("crash", "sigterm"):
        command = commands.add_parser(name)
        command.add_argument("url")
        command.add_argument("--runs", type=int, default=10)
    command = commands.add_parser("fork")
    command.add_argument("url")
    command.add_argument("mode", choices=("os", "multiprocessing"))
    command = commands.add_parser("writers")
    command.add_argument("url")
    command.add_argument("prefix")
    command.add_argument("--threads", type=int, default=4)
    command.add_argument("--runs", type=int, default=50)
    commands.add_parser("replay").add_argument("url")
    command = commands.add_parser("memory")
    command.add_argument("url")
    command.add_argument("--events", type=int, default=100_000)
    command.add_argument("--no-spool", action="store_true")
    args = parser.parse_args()
    globals()[args.command](args)


if __name__ == "__main__":
    main()
