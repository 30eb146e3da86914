"""One spelling per rule: statuses from the enums, one JSON encoder, one masked exception line.

The status and rule checks read the code (not the docstrings) of every module under
``exporters/`` and ``instrumentation/`` (but ``instrumentation/attributes.py``, where the
statuses are defined). A status word counts as spelled when it is *used as a status*: compared
(``==``, ``in``), given as a ``status`` (keyword, assignment, or a conditional on a status),
keyed on or listed with another status word; a table header or a width sample does not count.
A rule (the loopback test, the constant-time token comparison, the masked exception line, the
JSON encoder for output) lives in one module, which the others import.

Repeats being folded may be listed in ``KNOWN_*`` below while the work is under way (the tests
ignore them and fail on any new repeat); both lists are empty now.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from exporters.db.driver_errors import describe
from exporters.db.json import dumps_text, json_ready
from instrumentation import RunStatus, StepStatus, workflow_run
from instrumentation._spans import traceparent_of
from tests.conftest import History

ROOT = Path(__file__).resolve().parent.parent
STATUS_WORDS = {s.value for s in RunStatus} | {s.value for s in StepStatus}
CHECKED = sorted(
    path
    for package in ("exporters", "instrumentation")
    for path in (ROOT / package).rglob("*.py")
    if path != ROOT / "instrumentation" / "attributes.py"
)

STEP_PLACEHOLDER = "exporters/history/rows.py"
"""``metadata.steps`` marks a declared, not yet started step ``"pending"``: a state no step row
holds, so ``StepStatus`` has no member for it (``RunStatus.PENDING`` would name a run state)."""

KNOWN_STATUS_REPEATS: set[str] = set()
"""Engineer D1 folded serve's status tuples onto the enums (``ACTIVE_RUN_STATUSES``,
``RunStatus``, ``StepStatus``)."""

KNOWN_RULE_REPEATS: dict[str, set[str]] = {}
"""Each rule's modules while a repeat is being folded (none now: ``is_loopback`` and the token
check live in ``exporters/access.py``, the JSON encoder in ``exporters/db/json.py``). A module
outside a rule's set is a new repeat."""

OTHER_FORMATS = {"JSON encoder": {"exporters/spool/format.py"}}
"""Not a repeat: the spool's file format stores times as integer microseconds, not as text."""


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            found.add(id(body[0].value))
    return found


def _words(node: ast.AST | None) -> list[ast.Constant]:
    """Status-word constants that *node* is, or directly holds (a tuple, list or set)."""
    if isinstance(node, ast.Constant) and node.value in STATUS_WORDS:
        return [node]
    if isinstance(node, ast.IfExp):
        return _words(node.body) + _words(node.orelse)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [e for e in node.elts if isinstance(e, ast.Constant) and e.value in STATUS_WORDS]
    return []


def _names_status(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id.endswith("status")) or (
        isinstance(node, ast.Attribute) and node.attr.endswith("status")
    )


def _used_as_status(tree: ast.AST) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                yield from _words(operand)
        elif isinstance(node, ast.Dict):
            keys = [k for k in node.keys if isinstance(k, ast.Constant) and k.value in STATUS_WORDS]
            yield from keys if len(keys) > 1 else []
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            words = _words(node)
            yield from words if len(words) > 1 else []
        elif (isinstance(node, ast.keyword) and (node.arg or "").endswith("status")) or (
            isinstance(node, ast.Assign) and any(_names_status(t) for t in node.targets)
        ):
            yield from _words(node.value)
        elif isinstance(node, ast.IfExp) and any(_names_status(n) for n in ast.walk(node.test)):
            yield from _words(node)


def _status_spellings() -> dict[str, list[str]]:
    spelled: dict[str, list[str]] = {}
    for path in CHECKED:
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        name = path.relative_to(ROOT).as_posix()
        for node in sorted(set(_used_as_status(tree)), key=lambda n: n.lineno):
            if id(node) not in docs:
                spelled.setdefault(name, []).append(f"{name}:{node.lineno} {node.value!r}")
    return spelled


def _is_loopback_test(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "is_loopback"


def _is_token_comparison(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "compare_digest"


def _is_masked_line(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and node.name == "describe"


def _is_json_encoder(node: ast.AST) -> bool:
    """``json.dumps(..., default=...)`` or ``json.JSONEncoder(..., default=...)``."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("dumps", "JSONEncoder")
        and any(keyword.arg == "default" for keyword in node.keywords)
    )


RULES: dict[str, Callable[[ast.AST], bool]] = {
    "loopback test": _is_loopback_test,
    "token comparison": _is_token_comparison,
    "masked exception line": _is_masked_line,
    "JSON encoder": _is_json_encoder,
}
"""Each rule, and how to recognise a module that spells it (rather than importing it)."""


def _rule_spellings() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {rule: set() for rule in RULES}
    for path in CHECKED:
        tree = ast.parse(path.read_text())
        name = path.relative_to(ROOT).as_posix()
        for rule, spells in RULES.items():
            if name not in OTHER_FORMATS.get(rule, set()) and any(map(spells, ast.walk(tree))):
                found[rule].add(name)
    return found


def test_statuses_are_spelled_by_the_enums_only() -> None:
    spelled = _status_spellings()
    new = {
        name: lines
        for name, lines in spelled.items()
        if name not in KNOWN_STATUS_REPEATS and name != STEP_PLACEHOLDER
    }
    assert new == {}
    placeholder = [line.split(" ", 1)[1] for line in spelled.get(STEP_PLACEHOLDER, [])]
    assert placeholder == ["'pending'"]  # the one allowed spelling, wherever its line moves


def test_the_status_check_finds_a_status_spelled_as_a_string() -> None:
    """The detector sees each way a status is used, and not a header or a width sample."""
    code = """
if run.status == "failed": pass
ok = state in ("running", "pending")
STYLES = {"completed": "green", "skipped": "dim"}
row = dict(status="cancelled")
self.status = "retrying"
value = "abandoned" if status is None else status
headers = ("runs", "failed", "p50")
width = len("running")
"""
    nodes = {id(node): node for node in _used_as_status(ast.parse(code))}
    found = sorted(str(node.value) for node in nodes.values())
    assert found == sorted(
        ["failed", "running", "pending", "completed", "skipped", "cancelled", "retrying",
         "abandoned"]
    )  # fmt: skip


def test_each_rule_is_spelled_in_one_module() -> None:
    found = _rule_spellings()
    repeated = {
        rule: sorted(modules)
        for rule, modules in found.items()
        if (modules - KNOWN_RULE_REPEATS[rule] if rule in KNOWN_RULE_REPEATS else len(modules) > 1)
    }
    assert repeated == {}
    assert found["masked exception line"] == {"exporters/db/driver_errors.py"}
    assert "exporters/db/json.py" in found["JSON encoder"]


def test_an_exception_is_one_masked_line() -> None:
    url = sa.make_url("postgresql://flowtel:s3cret@db/history")
    driver = ValueError("password s3cret refused\nfor postgresql://u:other@h/db\nline 3")
    wrapped = sa.exc.OperationalError("SELECT 1", {}, driver)
    line = describe(wrapped, url)
    assert line == "ValueError: password *** refused"
    assert describe(RuntimeError("see postgresql://u:pw@h/db")) == (
        "RuntimeError: see postgresql://u:[REDACTED]@h/db"
    )
    assert len(describe(RuntimeError("x" * 1000))) <= len("RuntimeError: ") + 300


def test_one_encoder_for_output() -> None:
    """``dumps_text`` and ``json_ready`` agree (the module check is in the rule test above)."""
    when = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    value = {"status": RunStatus.FAILED, "at": when, "naive": dt.datetime(2026, 1, 1), "n": 1}
    expected = {
        "status": "failed",
        "at": "2026-12-02T07:00:00.000000Z",
        "naive": "2026-01-01T00:00:00.000000Z",
        "n": 1,
    }
    assert json.loads(dumps_text(value)) == expected
    assert json_ready(value) == expected


def test_traceparent_is_written_by_the_w3c_propagator(
    history: History, tracer_provider: TracerProvider
) -> None:
    with workflow_run("wf", tracer_provider=tracer_provider) as run:
        written = run.traceparent
        context = run.span.get_span_context()
    history.flush()
    extracted = trace.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": written})
    ).get_span_context()
    assert (extracted.trace_id, extracted.span_id) == (context.trace_id, context.span_id)
    assert extracted.trace_flags == context.trace_flags
    (row,) = history.runs(run_id=run.run_id)
    assert row.metadata["trace"]["traceparent"] == written
    assert traceparent_of(trace.INVALID_SPAN_CONTEXT) == ""
