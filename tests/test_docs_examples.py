"""The docs' examples work as written: the guide's pytest example, its accessors, the install line.

The guide's ``## Test it`` code block runs as a user's test module (``pytester``) against code
that fails at ``verify_bios_settings``; every accessor the paragraph under it names
(``finished_spans()``, ``spans.get_finished_spans()`` ...) is evaluated on the fixture's value.
The home page's install command installs from a clone (``pip install .``), not a package name
that no index publishes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_pytest_plugin import run, user_suite  # noqa: F401 - the fixture

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "guide.md").read_text()
INDEX = (ROOT / "docs" / "index.md").read_text()


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_the_guides_pytest_example_and_every_accessor_it_names_work(
    user_suite: pytest.Pytester,  # noqa: F811 - the fixture
) -> None:
    """The guide's example passes as written; each accessor it lists evaluates without error."""
    section = _section(GUIDE, "## Test it")
    (example,) = _blocks(section, "python")
    prose = section.split("```")[-1].strip().split("\n\n")[0]  # "Its value has ..."
    assert prose.startswith("Its value has")
    accessors = [
        name.replace("(...)", "()").replace("(ref)", "('provision_srv-1')")
        for name in re.findall(r"`([a-z_][a-z_.]*(?:\(\)|\(\.\.\.\)|\(ref\))?)`", prose)
    ]
    assert "finished_spans()" in accessors and "spans.get_finished_spans()" in accessors
    checks = "\n".join(f"    flowtel_history.{name}" for name in accessors)
    user_suite.makepyfile(
        test_guide="import pytest\nfrom provisioning import BiosError, provision as _provision\n"
        "def provision(server_id):\n    _provision(server_id, bad_bios=True)\n\n"
        + example
        + "\n\ndef test_the_accessors_the_guide_names(flowtel_history):\n"
        + "    with pytest.raises(BiosError):\n        provision('srv-1')\n"
        + checks
        + "\n"
    )
    result = run(user_suite)
    result.assert_outcomes(passed=2)


def test_the_home_page_installs_from_a_clone_not_an_unpublished_name() -> None:
    """The first command of the home page is pip install . (a clone), never pip install flowtel."""
    block = _blocks(INDEX, "bash")[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands[0].startswith("pip install . ")
    assert not any(re.match(r"pip install ['\"]?flowtel\b", command) for command in commands)
