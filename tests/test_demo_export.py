"""``flowtel demo`` reports the trace export apart from the rows.

Before, ``"flushed": true`` was printed when every span had failed to export: the batch
processor's flush finished in time, and nobody looked at the exporter's answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the probe goes


def demo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    child_env.update(PYTHONPATH=str(ROOT), FLOWTEL_OTLP_TIMEOUT="1", **env)
    child_env.pop("FLOWTEL_DATABASE_URL", None)
    url = f"sqlite:///{tmp_path}/demo.db"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "exporters.cli",
            "demo",
            "--runs",
            "2",
            "--step-delay",
            "0",
            "--db",
            url,
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env,
        timeout=120,
        check=False,
    )


def test_failed_span_export_is_reported_apart_from_the_rows(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    done = demo(tmp_path, "--json", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["flushed"] is True  # the rows: all committed
    traces = summary["traces"]
    assert traces["enabled"] is True and traces["ok"] is False
    assert traces["spans_exported"] == 0 and traces["spans_failed"] > 0
    text = demo(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)
    assert "could not be exported" in text.stdout, text.stdout


def test_without_otlp_the_trace_export_is_reported_off(tmp_path: Path) -> None:
    done = demo(tmp_path, "--json")
    summary = json.loads(done.stdout)
    assert summary["flushed"] is True
    assert summary["traces"] == {
        "enabled": False,
        "ok": None,
        "spans_exported": 0,
        "spans_failed": 0,
        "spans_dropped": 0,
    }
