"""The decorators keep their functions' signatures, as mypy --strict sees them.

``tests/typing/decorated.py`` pins the parameters and return types of functions decorated with
``@workflow`` and ``@step`` (sync and async, bare and with options) and keeps wrong calls as
errors; this test runs mypy on it in-process and fails with mypy's own report.
"""

from __future__ import annotations

from pathlib import Path

from mypy import api

CHECKED = Path(__file__).parent / "typing" / "decorated.py"


def test_decorated_functions_keep_their_signatures() -> None:
    """mypy --strict accepts the pinned types and still rejects the wrong calls."""
    report, errors, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", "/dev/null", str(CHECKED)]
    )
    assert status == 0, report + errors
    assert "Success: no issues found in 1 source file" in report
