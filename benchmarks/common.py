"""What every benchmark shares: the 23-step workload, providers, interleaving, databases.

Every figure the suite reports is a ratio against a baseline measured in the same process,
interleaved with the subject (round 1: baseline then subject, round 2: subject then baseline,
...), because the machines this runs on are shared and noisy. Medians of per-round figures are
reported; the spread (min/max of the per-round ratios) is kept in the JSON.
"""

from __future__ import annotations

import atexit
import inspect
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import sqlalchemy as sa  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from exporters import WorkflowHistorySpanProcessor, make_engine  # noqa: E402
from exporters.db.schema import metadata  # noqa: E402
from instrumentation import workflow_run  # noqa: E402

STEPS: tuple[str, ...] = (
    "select_machine",
    "allocate_machine",
    "start_commissioning",
    "wait_for_commissioning",
    "verify_commissioning",
    "configure_bond",
    "configure_vlans",
    "assign_ip_addresses",
    "verify_network",
    "discover_cpus",
    "discover_memory",
    "discover_disks",
    "discover_nics",
    "record_inventory",
    "configure_ipmi_user",
    "set_ipmi_address",
    "verify_ipmi",
    "push_bios_settings",
    "reboot_for_bios",
    "verify_bios_settings",
    "run_burn_in",
    "final_validation",
    "mark_ready",
)
"""The 23 steps of the provisioning workflow every throughput figure is made of."""
SPANS_PER_WORKFLOW = len(STEPS) + 1

BACKENDS = ("sqlite", "postgresql", "mysql")
SERVER_ENV = {
    "postgresql": ("FLOWTEL_BENCH_POSTGRES_URL", "FLOWTEL_TEST_POSTGRES_URL"),
    "mysql": ("FLOWTEL_BENCH_MYSQL_URL", "FLOWTEL_TEST_MYSQL_URL"),
}


# -- statistics ----------------------------------------------------------------------------
def median(values: Iterable[float]) -> float:
    """The median of *values* (``nan`` when empty)."""
    data = list(values)
    return statistics.median(data) if data else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The *fraction* quantile of *values* (nearest rank; ``nan`` when empty)."""
    if not values:
        return float("nan")
    data = sorted(values)
    rank = min(len(data) - 1, max(0, round(fraction * len(data) + 0.5) - 1))
    return data[rank]


def ratio_summary(subject: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the per-round ratios ``subject[i] / baseline[i]``."""
    ratios = [s / b for s, b in zip(subject, baseline, strict=True) if b]
    return {
        "median": median(ratios),
        "min": min(ratios) if ratios else float("nan"),
        "max": max(ratios) if ratios else float("nan"),
        "rounds": len(ratios),
    }


def interleave(rounds: int, subjects: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    """Run each subject once per round, alternating the order every round.

    Returns every subject's per-round results, so each round's subject can be divided by the
    same round's baseline.
    """
    results: dict[str, list[Any]] = {name: [] for name in subjects}
    items = list(subjects.items())
    for round_number in range(rounds):
        order = items if round_number % 2 == 0 else list(reversed(items))
        for name, function in order:
            results[name].append(function())
    return results


# -- tracer providers ----------------------------------------------------------------------
class NullExporter(SpanExporter):
    """An OTLP stand-in that accepts every batch and sends nothing."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def bare_provider() -> TracerProvider:
    """An SDK tracer provider with no processor at all."""
    return TracerProvider(shutdown_on_exit=False)


def spool_options() -> dict[str, Any]:
    """A private spool directory for the processor, if it takes one (else nothing)."""
    parameters = inspect.signature(WorkflowHistorySpanProcessor.__init__).parameters
    for name in ("spool_dir", "spool_path", "spool_directory"):
        if name in parameters:
            return {name: tempfile.mkdtemp(prefix="spool-", dir=scratch_dir())}
    return {}


def flowtel_provider(
    url: str, *, otlp: bool = True, **processor_options: Any
) -> tuple[TracerProvider, WorkflowHistorySpanProcessor]:
    """A provider as ``configure()`` builds it: history processor first, then OTLP batching.

    The history tables are dropped and recreated so every measurement starts empty; the
    processor spools (if it can) into this run's scratch directory, not the user's.
    """
    engine = make_engine(url)
    metadata.drop_all(engine)
    provider = TracerProvider(shutdown_on_exit=False)
    options = {**spool_options(), **processor_options}
    processor = WorkflowHistorySpanProcessor(engine, **options)
    provider.add_span_processor(processor)
    if otlp:
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    assert processor.force_flush(30_000), processor.stats  # tables created, writer idle
    return provider, processor


def run_bare_workflows(tracer: Any, count: int) -> None:
    """*count* workflows of bare ``start_as_current_span`` spans: one root and 23 children."""
    for _ in range(count):
        with tracer.start_as_current_span("provision_server"):
            for name in STEPS:
                with tracer.start_as_current_span(name):
                    pass


_serial = [0]


def provision_run(provider: TracerProvider, prefix: str = "srv") -> Any:
    """The ``workflow_run`` scope of the next benchmark workflow (a new server each time)."""
    _serial[0] += 1
    n = _serial[0]
    return workflow_run(
        "provision_server",
        workflow_id=f"provision_{prefix}-{n}",
        context={"server_id": f"{prefix}-{n}", "device_type": "a1_c5_large"},
        total_steps=len(STEPS),
        tracer_provider=provider,
    )


def run_flowtel_workflows(provider: TracerProvider, count: int, prefix: str = "srv") -> list[str]:
    """*count* 23-step workflows through flowtel's context-manager API; returns the run ids."""
    run_ids = []
    for _ in range(count):
        with provision_run(provider, prefix) as run:
            for name in STEPS:
                with run.step(name):
                    pass
        run_ids.append(run.run_id)
    return run_ids


def wait_committed(
    processor: Any, committed: Callable[[], Any], expected: Any, timeout_s: float = 600.0
) -> dict[str, Any]:
    """``force_flush``, then, if it could not commit everything (rows it spooled because the
    queue ran ahead of the writer are replayed later), poll *committed* until it returns
    *expected*. Returns when that happened and how many rows went through the spool."""
    deadline = time.perf_counter() + timeout_s
    flushed = processor.force_flush(int(timeout_s * 1000))
    while True:
        now = time.perf_counter()
        if flushed or committed() == expected:
            break
        if now > deadline:
            raise AssertionError(f"rows not committed after {timeout_s} s: {processor.stats}")
        time.sleep(0.01)
    stats = processor.stats
    return {
        "at": now,
        "flushed": flushed,
        "rows_spooled": int(stats.get("rows_spooled") or 0),
        "events_dropped": int(stats.get("events_dropped") or 0),
    }


def reset_tables(engine: sa.Engine) -> None:
    """Empty both history tables (between rounds, outside any timing)."""
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM workflow_step_history"))
        connection.execute(sa.text("DELETE FROM workflow_history"))


def count_rows(url: str, *, status: str | None = None) -> tuple[int, int]:
    """(run rows, step rows) seen by a new connection; runs filtered by *status* if given."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            where = " WHERE status = :status" if status else ""
            runs = connection.execute(
                sa.text(f"SELECT count(*) FROM workflow_history{where}"), {"status": status}
            ).scalar_one()
            steps = connection.execute(
                sa.text("SELECT count(*) FROM workflow_step_history")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(runs), int(steps)


# -- databases -----------------------------------------------------------------------------
def server_url(backend: str) -> str | None:
    """The server URL for *backend* from the environment (bench variable first), or None."""
    for variable in SERVER_ENV[backend]:
        value = os.environ.get(variable)
        if value:
            return value
    return None


def available_backends() -> list[str]:
    """SQLite always; PostgreSQL and MariaDB when their URL is set."""
    return ["sqlite"] + [b for b in ("postgresql", "mysql") if server_url(b)]


_scratch = [""]


def scratch_dir() -> str:
    """A private temporary directory for this process's SQLite files (removed at exit)."""
    if not _scratch[0]:
        _scratch[0] = tempfile.mkdtemp(prefix="flowtel-bench-")
        atexit.register(shutil.rmtree, _scratch[0], True)
    return _scratch[0]


def database_url(backend: str, purpose: str) -> str:
    """A URL of a database named ``flowtel_bench_<purpose>`` on *backend* (created if absent).

    SQLite gets a fresh file in a temporary directory.
    """
    if backend == "sqlite":
        suffix = f"{os.getpid()}_{random.getrandbits(24):06x}"
        return f"sqlite:///{scratch_dir()}/{purpose}_{suffix}.db"
    base = server_url(backend)
    if base is None:
        raise RuntimeError(f"no URL for {backend}: set {' or '.join(SERVER_ENV[backend])}")
    url = sa.make_url(base)
    name = f"flowtel_bench_{purpose}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with admin.connect() as connection:
            if backend == "postgresql":
                exists = connection.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                ).scalar()
                if not exists:
                    connection.execute(sa.text(f"CREATE DATABASE {name}"))
            else:
                connection.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS {name}"))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


# -- the machine ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _server_version(backend: str) -> str | None:
    base = server_url(backend)
    if base is None:
        return None
    engine = sa.create_engine(base, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return str(connection.execute(sa.text("SELECT version()")).scalar())
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"
    finally:
        engine.dispose()


def machine_info(backends: Sequence[str]) -> dict[str, Any]:
    """CPU, cores, load, Python and database versions, for the results' header."""
    import importlib.metadata as md

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
        "opentelemetry_sdk": md.version("opentelemetry-sdk"),
    }
    for backend in ("postgresql", "mysql"):
        if backend in backends:
            info[backend] = _server_version(backend)
    return info


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Stopwatch:
    """Wall time and this thread's CPU time of a block."""

    __slots__ = ("_cpu0", "_wall0", "cpu", "wall")

    def __init__(self) -> None:
        self.wall = self.cpu = self._wall0 = self._cpu0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.thread_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.thread_time() - self._cpu0
