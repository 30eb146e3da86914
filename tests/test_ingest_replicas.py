"""Workers → the genuine collector's ``loadbalancing`` exporter → three ingest replicas → one
PostgreSQL, over OTLP/gRPC, with a replica killed mid-stream.

The collector built from collector/manifest.yaml (``FLOWTEL_OTELCOL``) runs the shipped
``deploy/collector-ingest-replicas.yaml`` (routing by trace id, static resolver, persistent
sending queue) on free loopback ports; each replica is ``flowtel ingest --listen-grpc`` in its
own process; workers are child processes using ``configure(history="collector")``, as in
tests/test_ingest_e2e.py, whose exactness check is reused: every reported run once with its
status, three steps per completed run (two for a failed one), nothing else. Each test has its
own PostgreSQL database. Every process is stopped whatever the test's outcome (tests/spawn.py).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.collector_support import (
    ROOT,
    Ingest,
    IngestCollector,
    free_ports,
    wait_until,
)
from tests.conftest import fresh_server_database
from tests.test_ingest_e2e import assert_exact, reports, start_workers, table

CONFIG = ROOT / "deploy" / "collector-ingest-replicas.yaml"
REPLICAS = 3


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped afterwards."""
    with fresh_server_database("postgresql", "flowtel_replicas") as url:
        yield url


def replicas(db_url: str, workdir: Path, token: str | None = None) -> list[Ingest]:
    """Three replicas (not started), each with its own HTTP (health) and gRPC port and spool."""
    ports = free_ports(2 * REPLICAS)
    extra = ["--token", token] if token else []
    return [
        Ingest(db_url, ports[2 * n], workdir, grpc_port=ports[2 * n + 1], name=f"r{n}", extra=extra)
        for n in range(REPLICAS)
    ]


def collector_for(workdir: Path, backends: list[Ingest], token: str = "") -> IngestCollector:
    hostnames = ", ".join(f"127.0.0.1:{b.grpc_port}" for b in backends)
    env = {"FLOWTEL_INGEST_REPLICAS": f"[{hostnames}]", "FLOWTEL_INGEST_TOKEN": token}
    return IngestCollector(workdir, None, config=CONFIG, env=env)


def counters(replica: Ingest, token: str) -> dict[str, Any]:
    """The replica's counters (``GET /stats``, which wants the token)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{replica.port}/stats", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def test_three_replicas_behind_the_loadbalancing_collector_give_exact_rows_and_share_the_runs(
    tmp_path: Path, postgres_url: str
) -> None:
    """With a bearer token: the shipped configuration's gRPC header reaches every replica."""
    token = "replica-s3cret"
    backends = [replica.start() for replica in replicas(postgres_url, tmp_path, token)]
    collector = collector_for(tmp_path, backends, token).start()
    try:
        expected = reports(start_workers(collector, 3, 60))
        assert len(expected) == 180
        assert_exact(postgres_url, expected, timeout=120)
        shares = [counters(replica, token) for replica in backends]
        assert all(s["committed_requests"] > 0 and s["workflow_spans"] > 0 for s in shares)
        assert sum(s["uncommitted_requests"] + s["busy_requests"] for s in shares) == 0
    finally:
        collector.stop()
        statuses = [replica.stop() for replica in backends]
    assert statuses == [0] * REPLICAS


def test_a_replica_killed_mid_stream_and_restarted_loses_nothing_and_doubles_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    backends = [replica.start() for replica in replicas(postgres_url, tmp_path)]
    collector = collector_for(tmp_path, backends).start()
    victim = backends[1]
    try:
        children = start_workers(collector, 3, 100, delay=0.005)
        wait_until(lambda: len(table(postgres_url)[0]) >= 20, 60, "the first rows")
        victim.kill()  # SIGKILL, mid-stream: what it held uncommitted is resent by the collector
        time.sleep(2.0)
        assert len(table(postgres_url)[0]) < 300, "the stream had ended before the kill"
        victim.start()  # same ports, as a restart policy would
        expected = reports(children)
        assert len(expected) == 300
        assert_exact(postgres_url, expected, timeout=180)
    finally:
        collector.stop()
        statuses = [replica.stop() for replica in backends]
    assert statuses == [0] * REPLICAS
    assert victim.starts == 2
