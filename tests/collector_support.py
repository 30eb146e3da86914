"""Helpers for the end-to-end tests: the real OpenTelemetry Collector, Zipkin, flowtel children.

:class:`Collector` runs the binary ``FLOWTEL_OTELCOL`` names (``bash .ci/collector.sh | tail -n
1`` builds it) with ``otel-collector.yaml`` plus ``tests/collector_overlay.yaml`` on free
loopback ports, waits for its health check, and after :meth:`Collector.stop` (a graceful
shutdown that drains its pipelines) parses what its file exporter wrote. :func:`zipkin_base`
finds the Zipkin server ``FLOWTEL_TEST_ZIPKIN_URL`` points at (``eval "$(bash .ci/zipkin.sh
start)"``). :func:`run_child` runs flowtel in a fresh interpreter, since ``configure()``
installs process-wide providers. :class:`Ingest` runs ``flowtel ingest`` (OTLP/HTTP, and
OTLP/gRPC when given a port) and :class:`IngestCollector` the collector with a ``deploy/``
configuration in front of it. Every process starts through :func:`tests.spawn.spawn`, so it is
stopped whatever the test's outcome. A missing service fails under CI and skips locally.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import missing_service
from tests.spawn import kill_group, spawn, stop

__all__ = [
    "CONFIG",
    "OVERLAY",
    "ROOT",
    "Collector",
    "Ingest",
    "IngestCollector",
    "attributes",
    "collector_binary",
    "free_ports",
    "get_json",
    "healthy",
    "run_child",
    "wait_until",
    "zipkin_base",
]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "otel-collector.yaml"
OVERLAY = ROOT / "tests" / "collector_overlay.yaml"
_BUILD_HINT = 'export FLOWTEL_OTELCOL="$(bash .ci/collector.sh | tail -n 1)"'


def collector_binary() -> str:
    """The collector binary from ``FLOWTEL_OTELCOL`` (fails under CI, else skips, if unset)."""
    binary = os.environ.get("FLOWTEL_OTELCOL", "")
    if not binary or not os.access(binary, os.X_OK):
        missing_service("the OpenTelemetry Collector", f"set FLOWTEL_OTELCOL ({_BUILD_HINT})")
    return binary


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET *url* and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def zipkin_base() -> str:
    """Zipkin's base URL from ``FLOWTEL_TEST_ZIPKIN_URL``, checked healthy."""
    intake = os.environ.get("FLOWTEL_TEST_ZIPKIN_URL", "")
    base = intake.split("/api/", 1)[0]
    how = 'eval "$(bash .ci/zipkin.sh start)" (sets FLOWTEL_TEST_ZIPKIN_URL)'
    if not base:
        missing_service("Zipkin", how)
    try:
        health = get_json(f"{base}/health", timeout=3)
    except (OSError, ValueError) as exc:
        missing_service("Zipkin", f"{base}/health does not answer ({exc}); {how}")
    if health.get("status") != "UP":
        missing_service("Zipkin", f"{base}/health says {health!r}; {how}")
    return base


def free_ports(count: int) -> list[int]:
    """*count* distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    """OTLP JSON ``[{"key": k, "value": {"stringValue": v}}]`` as a plain dict."""
    plain: dict[str, Any] = {}
    for item in items or []:
        value = item.get("value", {})
        if "intValue" in value:
            plain[item["key"]] = int(value["intValue"])
        elif "arrayValue" in value:
            values = value["arrayValue"].get("values", [])
            plain[item["key"]] = [next(iter(v.values()), None) for v in values]
        else:
            plain[item["key"]] = next(iter(value.values()), None)
    return plain


class Collector:
    """One collector process with the production config and the test overlay."""

    def __init__(self, workdir: Path, zipkin_intake: str | None = None) -> None:
        self.binary = collector_binary()
        self.out = workdir / "collector.jsonl"
        self.log = workdir / "collector.log"
        grpc, http, health, prom, own, backend = free_ports(6)
        self.grpc_endpoint = f"http://127.0.0.1:{grpc}"
        self.http_endpoint = f"http://127.0.0.1:{http}"
        self.health_url = f"http://127.0.0.1:{health}/"
        self.env = {
            **os.environ,
            "FLOWTEL_OTLP_GRPC_PORT": str(grpc),
            "FLOWTEL_OTLP_HTTP_PORT": str(http),
            "FLOWTEL_HEALTH_CHECK_ENDPOINT": f"127.0.0.1:{health}",
            "FLOWTEL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{prom}",
            "FLOWTEL_COLLECTOR_METRICS_PORT": str(own),
            "FLOWTEL_TRACES_BACKEND": f"127.0.0.1:{backend}",  # nothing listens: retried, dropped
            "FLOWTEL_TEST_COLLECTOR_OUT": str(self.out),
            "FLOWTEL_COLLECTOR_STORAGE_DIR": str(workdir / "collector-storage"),
            "FLOWTEL_TEST_ZIPKIN_URL": zipkin_intake or f"http://127.0.0.1:{backend}/api/v2/spans",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        """The collector's command line with both configuration files."""
        return [self.binary, *extra, f"--config={CONFIG}", f"--config={OVERLAY}"]

    def start(self, timeout: float = 30.0) -> Collector:
        """Start the collector and wait until its health check answers 200."""
        with self.log.open("wb") as log:
            self.process = spawn(self.command(), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the collector exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as response:
                    if response.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the collector was not healthy in {timeout}s: {self.log.read_text()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the collector down gracefully (pipelines drained to the file), or kill it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        time.sleep(0.5)  # let the batch processors hand what they hold to the exporters first
        stop(process, timeout)

    def otlp_env(self, protocol: str = "grpc") -> dict[str, str]:
        """The ``OTEL_EXPORTER_OTLP_*`` variables that point flowtel at this collector."""
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}

    def records(self) -> list[dict[str, Any]]:
        """Every export request the file exporters wrote (one JSON object per line): traces to
        ``collector.jsonl``, metrics to ``collector.jsonl.metrics``."""
        found: list[dict[str, Any]] = []
        for path in (self.out, self.out.with_name(self.out.name + ".metrics")):
            if path.exists():
                lines = path.read_text().splitlines()
                found.extend(json.loads(line) for line in lines if line.strip())
        return found

    def spans(self, service: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """``(resource attributes, span)`` for every span *service* sent."""
        for record in self.records():
            for resource_spans in record.get("resourceSpans", []):
                resource = attributes(resource_spans.get("resource", {}).get("attributes"))
                if resource.get("service.name") != service:
                    continue
                for scope in resource_spans.get("scopeSpans", []):
                    for span in scope.get("spans", []):
                        yield resource, span

    def metrics(self, service: str) -> dict[str, list[dict[str, Any]]]:
        """Metric name → every metric object *service* sent under that name."""
        found: dict[str, list[dict[str, Any]]] = {}
        for record in self.records():
            for resource_metrics in record.get("resourceMetrics", []):
                resource = attributes(resource_metrics.get("resource", {}).get("attributes"))
                if resource.get("service.name") != service:
                    continue
                for scope in resource_metrics.get("scopeMetrics", []):
                    for metric in scope.get("metrics", []):
                        found.setdefault(metric["name"], []).append(metric)
        return found


def run_child(
    code: str, env: Mapping[str, str] | None = None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh Python with *env* added; fail the test with its output if it fails."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    child_env.update(env or {})
    child_env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"child exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll *predicate* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def healthy(url: str) -> bool:
    """Whether GET *url* answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class Ingest:
    """``flowtel ingest`` in its own process (``python -m exporters.cli ingest``).

    It serves OTLP/HTTP on *port* and, when *grpc_port* is given, OTLP/gRPC there too; it is
    ready when its ``/health`` answers. Each start logs to ``ingest[-name]-N.log`` in *workdir*.
    """

    def __init__(
        self,
        db_url: str,
        port: int,
        workdir: Path,
        *,
        grpc_port: int | None = None,
        name: str = "",
        extra: Sequence[str] = (),
    ) -> None:
        self.db_url, self.port, self.workdir = db_url, port, workdir
        self.grpc_port, self.name, self.extra = grpc_port, name, tuple(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.spool = workdir / (f"spool-{name}" if name else "spool")

    @property
    def log(self) -> Path:
        """The log of the latest start."""
        return self.workdir / f"ingest{'-' + self.name if self.name else ''}-{self.starts}.log"

    def start(self, timeout: float = 30.0) -> Ingest:
        self.starts += 1
        env = {**os.environ, "PYTHONPATH": str(ROOT), "FLOWTEL_SPOOL_DIR": str(self.spool)}
        command = [sys.executable, "-m", "exporters.cli", "ingest", "--db", self.db_url,
                   "--listen", f"127.0.0.1:{self.port}", "--commit-timeout", "5",
                   *self.extra]  # fmt: skip
        if self.grpc_port is not None:
            command += ["--listen-grpc", f"127.0.0.1:{self.grpc_port}"]
        with self.log.open("wb") as log:  # the child keeps its own descriptor
            self.process = spawn(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"ingest exited {process.returncode}: {self.log.read_text()}")
            return healthy(f"http://127.0.0.1:{self.port}/health")

        wait_until(up, timeout, f"ingest on port {self.port}")
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            kill_group(self.process)

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after 30 s); the exit status, None if never started."""
        process, self.process = self.process, None
        return None if process is None else stop(process, 30)


class IngestCollector:
    """The genuine collector running a ``deploy/`` configuration in front of ``flowtel ingest``.

    *ingest_port* is the port of the one ingest deploy/collector-ingest.yaml sends to; for
    deploy/collector-ingest-replicas.yaml it is None and *env* names the replicas
    (``FLOWTEL_INGEST_REPLICAS``).
    """

    def __init__(
        self,
        workdir: Path,
        ingest_port: int | None,
        zipkin: str | None = None,
        *,
        config: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        grpc, http, health, own, dead = free_ports(5)
        self.config = config or ROOT / "deploy" / "collector-ingest.yaml"
        self.http_endpoint = f"http://127.0.0.1:{http}"
        self.grpc_endpoint = f"http://127.0.0.1:{grpc}"
        self.health_url = f"http://127.0.0.1:{health}/"
        self.log = workdir / "collector.log"
        self.env = {
            **os.environ,
            "FLOWTEL_OTLP_GRPC_PORT": str(grpc),
            "FLOWTEL_OTLP_HTTP_PORT": str(http),
            "FLOWTEL_HEALTH_CHECK_ENDPOINT": f"127.0.0.1:{health}",
            "FLOWTEL_COLLECTOR_METRICS_PORT": str(own),
            "FLOWTEL_COLLECTOR_STORAGE_DIR": str(workdir / "collector-storage"),
            "FLOWTEL_ZIPKIN_ENDPOINT": zipkin or f"http://127.0.0.1:{dead}/api/v2/spans",
            **(env or {}),
        }
        if ingest_port is not None:
            self.env["FLOWTEL_INGEST_ENDPOINT"] = f"http://127.0.0.1:{ingest_port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> IngestCollector:
        binary = collector_binary()
        with self.log.open("ab") as log:
            self.process = spawn(
                [binary, f"--config={self.config}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self.process

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the collector exited: {self.log.read_text()[-3000:]}")
            return healthy(self.health_url)

        wait_until(up, timeout, "the collector")
        return self

    def stop(self) -> None:
        """SIGTERM (the collector drains what it can) and wait; SIGKILL after 30 s."""
        process, self.process = self.process, None
        if process is not None:
            stop(process, 30)

    def kill(self) -> None:
        """SIGKILL, as a crash would (its persistent queue stays on disk)."""
        process, self.process = self.process, None
        if process is not None:
            kill_group(process)

    def worker_env(self, protocol: str = "http/protobuf") -> dict[str, str]:
        endpoint = self.http_endpoint if protocol != "grpc" else self.grpc_endpoint
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
