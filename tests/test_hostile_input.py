"""Bad input never breaks a run or the history: rejected at the API, or stored safely.

Names and ids are checked at the call with a clear ``TypeError``/``ValueError``; SQL
metacharacters round-trip unchanged (every statement is parameterized); NUL characters and
lone surrogates are made safe for PostgreSQL and MariaDB, also when a span that did not come
from flowtel's API carries them; and a hypothesis property test throws arbitrary values at the
context, step names and messages on every backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider

from exporters.db.migrations.backfill import LEGACY_RUN_ID_PREFIX
from exporters.db.schema import workflow_history
from instrumentation import attributes as attr
from instrumentation import current_run, workflow, workflow_run
from instrumentation._validation import RESERVED_RUN_ID_PREFIX
from tests.conftest import History

SQL_TEXT = 'O\'Brien "q" `t` \\ %s %(x)s ? :name $1 -- ; DROP TABLE workflow_history; /* */'


class Boom(Exception):
    """An error raised by the workflow's own code."""


class Hostile:
    """An object whose ``repr``/``str`` misbehave in the way its mode says."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __repr__(self) -> str:
        if self.mode == "raise":
            raise RuntimeError("no repr")
        if self.mode == "huge":
            return "r" * 300_000
        return "<Hostile \x00\ud800>"

    __str__ = __repr__


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: workflow_run(""), ValueError, "workflow name must not be empty"),
        (lambda: workflow_run("   "), ValueError, "must not be empty"),
        (lambda: workflow_run(42), TypeError, "workflow name must be a string, not int"),  # type: ignore[arg-type]
        (lambda: workflow_run("w" * 256), ValueError, "256 characters long; the limit is 255"),
        (lambda: workflow_run("a\nb"), ValueError, "control characters"),
        (lambda: workflow_run("a\x85b"), ValueError, "control characters"),
        (lambda: workflow_run("a\u202eb"), ValueError, "bidirectional overrides"),
        (lambda: workflow_run("a\ud800b"), ValueError, "lone surrogates"),
        (lambda: workflow_run("w", run_id="r" * 65), ValueError, "the limit is 64"),
        (
            lambda: workflow_run("w", run_id="legacy-42"),
            ValueError,
            "must not start with 'legacy-'",
        ),
        (lambda: workflow_run("w", run_id="LEGACY-42"), ValueError, "reserved for runs imported"),
        (lambda: workflow_run("w", run_id="Legacy-"), ValueError, "must not start with 'legacy-'"),
        (lambda: workflow_run("w", workflow_id=b"id"), TypeError, "workflow_id must be a string"),  # type: ignore[arg-type]
        (lambda: workflow_run("w", total_steps=2**31), ValueError, "total_steps must be between"),
        (lambda: workflow_run("w", declared_steps="abc"), TypeError, "list of names"),
        (lambda: workflow_run("w", declared_steps=["a", ""]), ValueError, r"declared_steps\[1\]"),
        (lambda: workflow_run("w", context=[("a", 1)]), TypeError, "context must be a mapping"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_rejected_clearly(call: Any, error: type, message: str) -> None:
    """Each bad argument raises the right error with a message that says what is wrong."""
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("run_id", ["legacy", "legacy42", "legacy_7", "my-legacy-7"])
def test_run_ids_near_the_reserved_prefix_are_accepted(
    run_id: str, tracer_provider: TracerProvider
) -> None:
    """Only ids that start with ``legacy-`` are reserved, not ids that merely contain it."""
    with workflow_run("w", run_id=run_id) as run:
        assert run.run_id == run_id


def test_the_reserved_prefix_is_the_one_imported_rows_get() -> None:
    """The migration's ``legacy-<id>`` run ids are exactly the ones users cannot give."""
    assert RESERVED_RUN_ID_PREFIX == LEGACY_RUN_ID_PREFIX


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"index": 0}, ValueError, "index must be between 1 and 2147483647"),
        ({"attempt": 2**40}, ValueError, "attempt must be between"),
        ({"index": "1"}, TypeError, "index must be an int"),
        ({"attempt": True}, TypeError, "attempt must be an int"),
    ],
)
def test_bad_step_positions_are_rejected(
    kwargs: dict[str, Any], error: type, message: str, tracer_provider: TracerProvider
) -> None:
    """Step indexes and attempts must fit their 32-bit columns; the run carries on."""
    with workflow_run("w") as run:
        with pytest.raises(error, match=message):
            run.step("s", **kwargs)
        with run.step("s"):
            pass


def test_error_messages_show_a_short_redacted_excerpt() -> None:
    """A rejected value is shown briefly and without secrets."""
    with pytest.raises(TypeError) as info:
        workflow_run(b"password=hunter2" + b"x" * 1000)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)
    assert len(str(info.value)) < 200


def _metadata_text(history: History, run_id: str) -> str:
    column = sa.cast(workflow_history.c.metadata, sa.Text)
    query = sa.select(column).where(workflow_history.c.run_id == run_id)
    with history.engine.connect() as connection:
        return str(connection.execute(query).scalar_one())


def _strict_json(text: str) -> Any:
    def reject(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def test_sql_metacharacters_round_trip(history: History) -> None:
    """Quotes, comments, placeholders and backslashes come back exactly as given."""
    name = f"wf {SQL_TEXT}"[:255]
    with (
        workflow_run(
            name, workflow_id=SQL_TEXT, run_id="r'\";--%s?:x", context={SQL_TEXT: SQL_TEXT}
        ) as run,
        run.step(SQL_TEXT) as step,
    ):
        step.set_message(SQL_TEXT)
    history.flush()
    (row,) = history.runs(run_id="r'\";--%s?:x")
    assert (row.workflow_name, row.workflow_id) == (name, SQL_TEXT)
    assert row.metadata["context_data"] == {SQL_TEXT: SQL_TEXT}
    (step_row,) = history.steps(run.run_id)
    assert (step_row.step_name, step_row.message) == (SQL_TEXT, SQL_TEXT)
    assert len(history.runs()) == 1


def test_nul_and_surrogates_through_the_api(history: History) -> None:
    """Context values, messages and exception text with NUL and lone surrogates are stored."""
    nasty = "a\x00b\ud800c\udfff"
    with pytest.raises(Boom), workflow_run("wf", context={nasty: nasty, "n": [nasty]}) as run:
        with run.step("s") as step:
            step.set_message(nasty)
        with run.step("t"):
            raise Boom(nasty)
    history.flush()
    (row,) = history.runs(run_id=run.run_id)
    assert row.metadata["context_data"] == {
        "a\ufffdb\ufffdc\ufffd": "a\ufffdb\ufffdc\ufffd",
        "n": ["a\ufffdb\ufffdc\ufffd"],
    }
    assert "a\ufffdb" in row.error_message
    steps = history.steps(run.run_id)
    assert steps[0].message == "a\ufffdb\ufffdc\ufffd"
    assert "Boom: a\ufffdb" in steps[1].error_stacktrace
    _strict_json(_metadata_text(history, run.run_id))


def test_foreign_spans_with_unsafe_text_are_still_written(
    history: History, tracer_provider: TracerProvider
) -> None:
    """Spans made without flowtel's API (no checks at all) cannot break the writer."""
    nasty = "x\x00y\ud800z"
    tracer = tracer_provider.get_tracer("foreign")
    run_attributes = {
        attr.RUN_ID: "foreign-run",
        attr.RUN_NAME: nasty,
        attr.RUN_WORKFLOW_ID: "w" * 400,
        attr.RUN_CONTEXT_JSON: json.dumps({"server_id": nasty, "v": [nasty, "\x00"]}),
        attr.RUN_STATUS: "failed",
        attr.ERROR_TYPE: nasty * 100,
    }
    step_attributes = {
        attr.RUN_ID: "foreign-run",
        attr.STEP_NAME: nasty,
        attr.STEP_INDEX: 1,
        attr.STEP_ATTEMPT: 1,
        attr.STEP_STATUS: "failed",
        attr.STEP_MESSAGE: nasty,
    }
    with tracer.start_as_current_span("wf", attributes=run_attributes) as span:
        with tracer.start_as_current_span("s", attributes=step_attributes) as step:
            step.add_event("exception", {"exception.message": nasty, "exception.type": nasty})
        span.set_status(sa_status(nasty))
    history.flush()
    (row,) = history.runs(run_id="foreign-run")
    assert row.server_id == "x\ufffdy\ufffdz"
    assert len(row.workflow_id) == 255 and len(row.error_type) == 255
    (step_row,) = history.steps("foreign-run")
    assert (step_row.step_name, step_row.message) == ("x\ufffdy\ufffdz", "x\ufffdy\ufffdz")
    assert _strict_json(_metadata_text(history, "foreign-run"))["context_data"]["v"][1] == "\ufffd"


def sa_status(description: str) -> Any:
    """An ERROR status with *description* (a helper so the test reads top-down)."""
    from opentelemetry.trace import Status, StatusCode

    return Status(StatusCode.ERROR, description)


def _nest(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"d": [value]}
    return value


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**80),
    st.floats(),
    st.text(),
    st.binary(max_size=64),
    st.sampled_from(["\x00", "\ud800", "a\udfffb", SQL_TEXT, "postgresql://u:pw@h/x", "\u202e"]),
    st.integers(0, 300_000).map(lambda n: "h" * n),
    st.sampled_from(["raise", "huge", "odd"]).map(Hostile),
    st.integers(1, 120).map(_nest),
    st.just(object()),
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.one_of(st.text(), st.integers(), st.none()), children, max_size=4),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=8,
)
_CONTEXTS = st.dictionaries(st.one_of(st.text(), st.integers(), st.none()), _VALUES, max_size=5)
_NAMES = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["ok", SQL_TEXT, "a\x00b", "\ud800", "x" * 256, ""]),
    st.integers(),
    st.binary(max_size=8),
    st.none(),
)
_OUTCOMES = st.sampled_from(["message", "fail", "skip", "retrying", "raise"])
_STEPS = st.lists(st.tuples(_NAMES, _VALUES, _OUTCOMES), max_size=4)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(context=_CONTEXTS, steps=_STEPS, fails=st.booleans(), failure=_VALUES)
def test_arbitrary_input_never_breaks_a_run(
    history: History, context: dict[Any, Any], steps: list[Any], fails: bool, failure: Any
) -> None:
    """Whatever is passed, the workflow's result is unchanged and its row reads back as JSON."""
    # Hypothesis seeds the global ``random`` alike for every example, and run ids (like the
    # SDK's span ids) come from it: without a fresh seed every example would reuse one run id.
    random.seed(os.urandom(16))
    result, error, run_ids = object(), Boom(failure), []

    def body() -> object:
        run = current_run()
        assert run is not None
        run_ids.append(run.run_id)
        for name, message, outcome in steps:
            try:
                scope = run.step(name)
            except (TypeError, ValueError) as exc:
                assert "step name" in str(exc)
                continue
            with contextlib.suppress(Boom), scope as step:
                if outcome == "raise":
                    raise Boom(message)
                getattr(step, "set_message" if outcome == "message" else outcome)(message)
        if fails:
            raise error
        return result

    wrapped = workflow(name="hostile", context=context)(body)
    if fails:
        with pytest.raises(Boom) as info:
            wrapped()
        assert info.value is error
    else:
        assert wrapped() is result
    history.flush()
    (row,) = history.runs(run_id=run_ids[0])
    assert row.status == ("failed" if fails else "completed")
    metadata = _strict_json(_metadata_text(history, run_ids[0]))
    assert isinstance(metadata["context_data"], dict)
    for step_row in history.steps(run_ids[0]):
        assert step_row.status in ("completed", "failed", "skipped", "retrying")
