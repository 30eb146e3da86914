"""A workflow that runs with no history processor installed warns once; with one, never.

``instrumentation`` cannot import ``exporters``: the history processor registers itself through
``instrumentation.recording``, and the first workflow that starts with none running logs one
warning on the ``flowtel`` logger. Each case runs in a child process, where the warning's
once-per-process state is fresh.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLOWTEL_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


def test_a_workflow_without_a_history_processor_warns_once() -> None:
    """Two runs, three ways to instrument, no configure(): one warning naming configure()."""
    done = _run(
        """
        import asyncio
        from instrumentation import workflow, workflow_run

        with workflow_run("provision_server"):
            pass
        with workflow_run("provision_server"):
            pass

        @workflow
        async def decommission():
            return 1

        asyncio.run(decommission())
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no history processor is installed") == 1, done.stderr
    assert "exporters.configure()" in done.stderr
    assert "'provision_server'" in done.stderr


def test_a_configured_workflow_does_not_warn(tmp_path: Path) -> None:
    """After configure() the same workflow records its run and nothing warns."""
    database = tmp_path / "h.db"
    done = _run(
        f"""
        from exporters import HistoryStore, configure
        from instrumentation import workflow_run

        url = "sqlite:///{database}"
        flowtel = configure(database_url=url, otlp=False, metrics=False, logs=False)
        with workflow_run("provision_server"):
            pass
        flowtel.shutdown()
        print(len(HistoryStore.from_url(url).list_runs()))
        """
    )
    assert done.returncode == 0, done.stderr
    assert "no history processor" not in done.stderr
    assert done.stdout.strip() == "1"


def test_a_workflow_after_shutdown_warns() -> None:
    """Once the only processor shut down, the next workflow records nothing and says so."""
    done = _run(
        """
        from opentelemetry.sdk.trace import TracerProvider
        from exporters import WorkflowHistorySpanProcessor, make_engine
        from instrumentation import workflow_run

        provider = TracerProvider()
        processor = WorkflowHistorySpanProcessor(make_engine("sqlite://"))
        provider.add_span_processor(processor)
        with workflow_run("first", tracer_provider=provider):
            pass
        provider.shutdown()
        with workflow_run("second", tracer_provider=provider):
            pass
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("no history processor is installed") == 1, done.stderr
    assert "'second'" in done.stderr


def test_a_worker_in_collector_mode_does_not_warn() -> None:
    """configure(history="collector") records history through ingest: nothing to warn about."""
    done = _run(
        """
        from exporters import configure
        from instrumentation import workflow_run

        handle = configure(
            history="collector", otlp_endpoint="http://127.0.0.1:9", otlp_timeout=0.2,
            otlp_protocol="http/protobuf", metrics=False, logs=False,
        )
        with workflow_run("provision_server"):
            pass
        handle.shutdown(5_000)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "no history processor" not in done.stderr
