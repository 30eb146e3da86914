"""Size limits: the Limits object, its environment variables, the cuts and where they apply."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporters.db.json import dumps_json
from exporters.telemetry.provider import span_limits
from instrumentation import workflow_run
from instrumentation.clean import clean_json, clean_text, keep_log_lines
from instrumentation.limits import Limits, get_limits, set_limits, truncate
from tests.conftest import History

MARKER = re.compile(r"…\[truncated (\d+) (bytes|keys|items|lines)\]")


@pytest.fixture
def small_limits() -> Iterator[Limits]:
    """Install small limits for one test, then the previous ones again."""
    before = get_limits()
    limits = Limits(context_bytes=2048, message_bytes=256, stacktrace_bytes=1024)
    set_limits(limits)
    yield limits
    set_limits(before)


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def test_defaults_match_the_issue() -> None:
    """64 KiB context and metadata, 4 KiB messages, 16 KiB traces, 500 steps, 20 log lines."""
    limits = Limits()
    assert (limits.context_bytes, limits.metadata_bytes) == (65536, 65536)
    assert (limits.message_bytes, limits.stacktrace_bytes) == (4096, 16384)
    assert (limits.metadata_steps, limits.log_lines, limits.log_line_bytes) == (500, 20, 1024)


def test_invalid_limits_are_rejected() -> None:
    """Non-integers and values below the minimum say which field is wrong."""
    with pytest.raises(ValueError, match="message_bytes must be at least 64"):
        Limits(message_bytes=10)
    with pytest.raises(TypeError, match="log_lines must be an int"):
        Limits(log_lines="20")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes a Limits"):
        set_limits({"message_bytes": 100})  # type: ignore[arg-type]


def test_environment_variables() -> None:
    """FLOWTEL_MAX_* set each limit; sizes take K/M units; errors name the variable."""
    limits = Limits.from_env(
        {
            "FLOWTEL_MAX_CONTEXT_BYTES": "1MiB",
            "FLOWTEL_MAX_MESSAGE_BYTES": "8k",
            "FLOWTEL_MAX_LOG_LINES": "5",
        }
    )
    assert (limits.context_bytes, limits.message_bytes, limits.log_lines) == (1 << 20, 8192, 5)
    assert limits.stacktrace_bytes == 16384
    with pytest.raises(ValueError, match="FLOWTEL_MAX_LOG_LINES='5K'"):
        Limits.from_env({"FLOWTEL_MAX_LOG_LINES": "5K"})
    with pytest.raises(ValueError, match="FLOWTEL_MAX_STACKTRACE_BYTES='lots'"):
        Limits.from_env({"FLOWTEL_MAX_STACKTRACE_BYTES": "lots"})


@pytest.mark.parametrize("keep", ["head", "middle"])
@pytest.mark.parametrize("text", ["a" * 10_000, "é€😀" * 3_000, "x\ud800y" * 2_000])
def test_truncate_fits_and_counts_what_it_removed(text: str, keep: Any) -> None:
    """The result fits, ends or breaks where it says, and the marker counts the cut bytes."""
    out = truncate(text, 500, keep=keep)
    assert _utf8(out) <= 500
    (match,) = MARKER.finditer(out)
    kept = _utf8(out) - _utf8(match.group(0))
    assert int(match.group(1)) == _utf8(text) - kept
    if keep == "middle":
        assert out.endswith(text[-20:])
    assert out.startswith(text[:20])


def test_short_text_is_returned_unchanged() -> None:
    """Text within the limit is not touched (and gets no marker)."""
    assert truncate("short", 64) == "short"
    assert clean_text("short", 64) == "short"


def test_clean_text_masks_before_cutting() -> None:
    """A URL cut at the edge never leaves part of its password behind."""
    secret = "S" * 40
    text = "x" * 80 + f" postgresql://user:{secret}@db/x" + "y" * 100_000
    out = clean_text(text, 120)
    assert "SSSS" not in out
    (match,) = MARKER.finditer(out)
    assert int(match.group(1)) == _utf8(text) - (_utf8(out) - _utf8(match.group(0)))


def test_clean_json_bounds_everything() -> None:
    """Huge strings, many keys, long lists, deep nesting: valid JSON within the budget."""
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(200):
        node["d"] = {}
        node = node["d"]
    value = {
        "big": "z" * 200_000,
        "many": {f"k{i}": i for i in range(50_000)},
        "long": list(range(100_000)),
        "deep": deep,
    }
    data, text = clean_json(value, 4096)
    assert _utf8(text) <= 4096
    assert json.loads(text) == data
    assert MARKER.search(text)


def test_clean_json_handles_non_json_values() -> None:
    """NaN, infinities, big ints, bytes, sets and objects become JSON; repr failures too."""

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    data, text = clean_json(
        {1: float("nan"), "inf": float("-inf"), "big": 10**5000, "b": b"\xff\x00", "o": Broken()},
        65536,
    )
    assert data == {
        "1": "nan",
        "inf": "-inf",
        "big": "<unprintable int>",
        "b": "\\xff\ufffd",
        "o": "<unrepresentable Broken>",
    }
    json.loads(text)


def test_clean_json_retries_when_escapes_inflate_the_text() -> None:
    """Control characters take six bytes each in JSON: the result still fits."""
    _, text = clean_json({"x": "\x01" * 50_000}, 8192)
    assert _utf8(text) <= 8192


def test_keep_log_lines_keeps_the_latest() -> None:
    """The last lines are kept, each bounded, and the first entry counts the dropped ones."""
    lines = [f"line {i} " + "x" * 2000 for i in range(30)]
    kept = keep_log_lines(lines)
    assert len(kept) == 20
    assert kept[0] == "…[truncated 11 lines]"
    assert kept[-1].startswith("line 29")
    assert all(_utf8(line) <= 1024 for line in kept)
    assert keep_log_lines(["a", "b"]) == ["a", "b"]


def test_span_limits_match() -> None:
    """The SDK never cuts an attribute flowtel has bounded, nor evicts the run's own ones."""
    limits = span_limits(Limits(context_bytes=100_000, context_attributes=200))
    assert limits.max_attribute_length == 100_000
    assert limits.max_span_attributes is not None and limits.max_span_attributes >= 232


def test_producer_side_limits(span_exporter: InMemorySpanExporter, small_limits: Limits) -> None:
    """Context JSON, messages, descriptions, exception messages and traces are bounded."""

    def ping(n: int) -> None:  # two functions: Python folds a frame repeated in a row
        if n == 0:
            raise ValueError("deep")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    context = {"blob": "b" * 100_000}
    with (
        pytest.raises(ValueError),
        workflow_run("wf", context=context, description="d" * 9999) as run,
    ):
        with run.step("a") as step:
            step.set_message("s" * 10_000)
        with contextlib.suppress(KeyError), run.step("b"):
            raise KeyError("k" * 10_000)
        with run.step("c"):
            ping(50)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    run_attrs = spans["wf"].attributes
    assert _utf8(run_attrs["workflow.context_json"]) <= small_limits.context_bytes
    assert MARKER.search(json.loads(run_attrs["workflow.context_json"])["blob"])
    assert _utf8(run_attrs["workflow.description"]) <= small_limits.message_bytes
    assert _utf8(spans["a"].attributes["workflow.step.message"]) <= small_limits.message_bytes
    assert _utf8(spans["b"].events[0].attributes["exception.message"]) <= 256
    assert _utf8(spans["b"].attributes["workflow.step.message"]) <= 256
    stack = spans["c"].events[0].attributes["exception.stacktrace"]
    assert _utf8(stack) <= small_limits.stacktrace_bytes
    assert MARKER.search(stack)
    assert stack.startswith("Traceback") and stack.endswith("ValueError: deep\n")
    assert _utf8(spans["wf"].status.description) <= small_limits.message_bytes


def test_many_context_keys_never_evict_the_run_id() -> None:
    """With the SDK's default 128-attribute limit, 1000 context keys keep the run's row."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with workflow_run("wf", tracer_provider=provider) as run:
        run.set_context({f"k{i}": i for i in range(1000)})
        run.set_context(more=1)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["workflow.run_id"] == run.run_id
    assert len(json.loads(span.attributes["workflow.context_json"])) == 1001
    assert sum(k.startswith("workflow.context.") for k in span.attributes) == 64


def test_dumps_json_bounds_metadata_and_keeps_small_fields() -> None:
    """Metadata over its limit keeps the small entries and says how many steps it cut."""
    metadata = {
        "workflow_name": "wf",
        "steps": [{"index": i, "name": f"s{i}", "error": "e" * 300} for i in range(500)],
        "context_data": {"blob": "x" * 100_000},
        "timestamps": {"started_at": "2026-01-01T00:00:00+00:00"},
        "trace": {"trace_id": "0" * 32},
    }
    text = dumps_json(metadata)
    assert _utf8(text) <= get_limits().metadata_bytes
    loaded = json.loads(text)
    assert loaded["timestamps"] == metadata["timestamps"]
    assert loaded["trace"] == metadata["trace"]
    assert loaded["steps_truncated"] == 500 - len(loaded["steps"]) > 0
    assert all(isinstance(step, dict) for step in loaded["steps"])


def test_dumps_json_makes_values_safe_for_every_backend() -> None:
    """NUL, lone surrogates, NaN and objects are replaced; clean values pass as they are."""
    text = dumps_json({"a": "x\x00y", "b": "\ud800", "c": float("nan"), "d": {1, 2}})
    assert "\\u0000" not in text and "NaN" not in text
    assert json.loads(text)["a"] == "x\ufffdy"
    plain = {"server_id": "srv-1", "n": [1, 2.5, None, True]}
    assert json.loads(dumps_json(plain)) == plain


@pytest.fixture
def tight_metadata(request: pytest.FixtureRequest) -> Iterator[Limits]:
    """Limits with the given metadata fields, for one test."""
    before = get_limits()
    limits = Limits(**request.param)
    set_limits(limits)
    yield limits
    set_limits(before)


@pytest.mark.parametrize("tight_metadata", [{"metadata_steps": 5}], indirect=True)
def test_metadata_lists_at_most_metadata_steps(history: History, tight_metadata: Limits) -> None:
    """Steps beyond ``metadata_steps`` are counted in ``steps_truncated``, not listed."""
    with workflow_run("wf") as run:
        for n in range(8):
            with run.step(f"step_{n}"):
                pass
    history.flush()
    (row,) = history.runs(run_id=run.run_id)
    assert [s["name"] for s in row.metadata["steps"]] == [f"step_{n}" for n in range(5)]
    assert row.metadata["steps_truncated"] == 3
    assert len(history.steps(run.run_id)) == 8


@pytest.mark.parametrize("tight_metadata", [{"metadata_bytes": 4096}], indirect=True)
def test_metadata_json_fits_on_every_backend(history: History, tight_metadata: Limits) -> None:
    """Metadata over its byte limit is cut to fit; small fields and the row survive."""
    with workflow_run("wf", context={"blob": "c" * 3000}) as run:
        for n in range(8):
            with run.step(f"step_{n}") as step:
                step.fail("x" * 1000)
    history.flush()
    (row,) = history.runs(run_id=run.run_id)
    assert row.metadata["steps_truncated"] == 8 - len(row.metadata["steps"]) > 0
    assert len(history.steps(run.run_id)) == 8
    text = json.dumps(row.metadata, ensure_ascii=False)
    assert _utf8(text) <= tight_metadata.metadata_bytes * 1.05  # PostgreSQL reorders keys
    assert row.metadata["trace"]["trace_id"] == row.trace_id
