"""The API-only distribution ``flowtel-api`` (``api/pyproject.toml``), installed as a user would.

It is built from this checkout into a wheel, installed into a fresh virtual environment with
the OpenTelemetry API as its only dependency, and ``instrumentation`` is imported and used there
with no SDK, no SQLAlchemy and no ``exporters`` present. The root ``pyproject.toml`` still
installs everything.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _project(path: Path) -> dict[str, Any]:
    return dict(tomllib.loads(path.read_text())["project"])


def test_both_distributions_carry_one_version() -> None:
    """flowtel-api has the root's version; its only dependency is the OpenTelemetry API."""
    api, root = _project(ROOT / "api" / "pyproject.toml"), _project(ROOT / "pyproject.toml")
    assert (api["name"], api["version"]) == ("flowtel-api", root["version"])
    (only,) = api["dependencies"]
    assert only.startswith("opentelemetry-api") and only in root["dependencies"]  # same bounds


def test_the_root_distribution_still_installs_everything() -> None:
    """pip install flowtel keeps the SDK, the OTLP exporter, SQLAlchemy and the command line."""
    names = {
        str(d).split(">")[0].split("[")[0]
        for d in _project(ROOT / "pyproject.toml")["dependencies"]
    }  # type: ignore[attr-defined]
    assert {"opentelemetry-sdk", "opentelemetry-exporter-otlp", "SQLAlchemy", "click"} <= names


def _run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_api_only_install_imports_instrumentation_without_the_sdk(tmp_path: Path) -> None:
    """A fresh venv with flowtel-api and opentelemetry-api runs a workflow; no SDK is there."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT / "api", source / "api", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    shutil.copytree(ROOT / "instrumentation", source / "instrumentation",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "-w", tmp_path / "dist", source / "api")
    wheel = next((tmp_path / "dist").glob("flowtel_api-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    otel_api = importlib.metadata.version("opentelemetry-api")
    _run(*pip, "--python", python, "install", "--no-deps", wheel)
    _run(*pip, "--python", python, "install", f"opentelemetry-api=={otel_api}")
    script = textwrap.dedent(
        """
        import importlib.util, json
        import instrumentation
        from instrumentation import workflow_run

        with workflow_run("provision_server", workflow_id="provision_srv-1") as run:
            with run.step("select_machine"):
                pass
        print(json.dumps({
            "version": instrumentation.__version__,
            "file": instrumentation.__file__,
            "status": run.status.value,
            "missing": [name for name in ("opentelemetry.sdk", "sqlalchemy", "exporters",
                                          "click", "rich", "structlog")
                        if importlib.util.find_spec(name) is None],
        }))
        """
    )
    done = _run(python, "-I", "-c", script, cwd=tmp_path)
    facts = json.loads(done.stdout)
    assert "no history processor is installed" in done.stderr  # nothing records: it says so
    assert "only the flowtel-api distribution" in done.stderr  # and what to install first
    assert "install the full flowtel distribution" in done.stderr
    version = _project(ROOT / "api" / "pyproject.toml")["version"]
    assert facts["version"] == version
    assert facts["file"].startswith(str(venv))
    assert facts["status"] == "completed"
    assert facts["missing"] == ["opentelemetry.sdk", "sqlalchemy", "exporters", "click", "rich",
                                "structlog"]  # fmt: skip
