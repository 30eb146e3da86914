"""The public surface: sorted ``__all__``, one-way dependencies and docstrings."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("instrumentation", "exporters")


def isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then CamelCase, then everything else."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_and_complete(package: str) -> None:
    """Each package re-exports a sorted ``__all__`` whose names all exist."""
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == sorted(names, key=isort_key)
    assert [n for n in names if not hasattr(module, n)] == []


def test_instrumentation_imports_neither_sdk_nor_sqlalchemy_nor_structlog() -> None:
    """Importing the producer side loads only the OpenTelemetry API and the stdlib."""
    code = (
        "import sys, instrumentation;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'structlog')"
        " or m.startswith('opentelemetry.sdk')];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def test_instrumentation_never_imports_exporters() -> None:
    """Dependencies point one way: nothing in instrumentation/ imports exporters."""
    offenders = []
    for path in (ROOT / "instrumentation").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("exporters"):
                offenders.append(path.name)
            if isinstance(node, ast.Import) and any(
                a.name.startswith("exporters") for a in node.names
            ):
                offenders.append(path.name)
    assert offenders == []


@pytest.mark.parametrize(
    "path",
    sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")),
)
def test_module_is_documented(path: str) -> None:
    """Every module and package opens with a docstring that says what lives there.

    The shape of the house (which package may import which) is the import contract in
    ``pyproject.toml``, checked by ``lint-imports`` in ``.ci/run``.
    """
    source = (ROOT / path).read_text()
    assert ast.get_docstring(ast.parse(source)), f"{path} has no module docstring"
