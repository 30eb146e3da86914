"""``configure()`` and the application's tracer provider: flowtel shuts down only what it made.

Each case runs in a child process, since ``configure()`` and ``set_tracer_provider`` change
process-wide state. A second ``configure()`` with the same arguments returns the live handle
(idempotent); with other arguments it raises :class:`AlreadyConfiguredError`, and after
``shutdown()`` it configures afresh. A provider handed to ``configure()`` has its workflow spans
recorded: installed globally when the application has no SDK provider, else reached by passing
``tracer_provider=`` to the workflows (and ``configure()`` says so).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.collector_support import run_child

PRELUDE = """
import json, logging, sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from exporters import configure
from instrumentation import workflow_run

URL = {url!r}

def runs(handle):
    assert handle.force_flush(5000)
    with sa.create_engine(URL).connect() as c:
        return c.exec_driver_sql("SELECT workflow_name FROM workflow_history").scalars().all()

def processors(provider):
    return [type(p).__name__ for p in provider._active_span_processor._span_processors]
"""


def child(tmp_path: Path, body: str) -> dict[str, object]:
    code = PRELUDE.format(url=f"sqlite:///{tmp_path}/h.db") + body
    done = run_child(code, timeout=60)
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_the_applications_provider_survives_flowtels_shutdown(tmp_path: Path) -> None:
    result = child(
        tmp_path,
        """
app = TracerProvider(); exported = InMemorySpanExporter()
app.add_span_processor(SimpleSpanProcessor(exported))
trace.set_tracer_provider(app)
handle = configure(database_url=URL, logs=False, otlp=False)
with workflow_run("wf"):
    pass
recorded = runs(handle)
handle.shutdown(2000)
with app.get_tracer("app").start_as_current_span("after"):
    pass
print(json.dumps({"same": handle.tracer_provider is app, "recorded": recorded,
                  "exported": [s.name for s in exported.get_finished_spans()],
                  "left": processors(app)}))
""",
    )
    assert result["same"] is True and result["recorded"] == ["wf"]
    assert result["exported"] == ["wf", "after"]  # the app's exporter still works
    assert "SimpleSpanProcessor" in result["left"]  # flowtel's own processors are shut down


def test_a_second_configure_is_idempotent_or_a_clear_error(tmp_path: Path) -> None:
    result = child(
        tmp_path,
        """
from exporters import AlreadyConfiguredError
first = configure(database_url=URL, logs=False, otlp=False)
again = configure(database_url=URL, logs=False, otlp=False)
before = processors(first.tracer_provider)
try:
    configure(database_url=URL + "-other", logs=False, otlp=False)
    error = None
except AlreadyConfiguredError as exc:
    error = str(exc)
with workflow_run("wf"):
    pass
recorded = runs(first)
first.shutdown(2000)
fresh = configure(database_url=URL, logs=False, otlp=False, tracer_provider=TracerProvider())
print(json.dumps({"same": again is first, "processors": before, "error": error,
                  "recorded": recorded, "fresh": fresh is not first}))
fresh.shutdown(2000)
""",
    )
    assert result["same"] is True
    assert sorted(result["processors"]) == ["WorkflowHistorySpanProcessor"]  # not two
    assert "already configured" in str(result["error"]) and "shutdown()" in str(result["error"])
    assert result["recorded"] == ["wf"]  # one row, not two processors racing
    assert result["fresh"] is True


def test_a_provider_handed_to_configure_is_recorded(tmp_path: Path) -> None:
    """No SDK provider installed: the given one becomes global and workflows reach it."""
    result = child(
        tmp_path,
        """
mine = TracerProvider()
handle = configure(database_url=URL, logs=False, otlp=False, tracer_provider=mine)
with workflow_run("plain"):
    pass
print(json.dumps({"recorded": runs(handle), "global": trace.get_tracer_provider() is mine}))
handle.shutdown(2000)
""",
    )
    assert result == {"recorded": ["plain"], "global": True}


def test_a_provider_beside_another_global_one_is_recorded_and_configure_says_how(
    tmp_path: Path,
) -> None:
    result = child(
        tmp_path,
        """
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("flowtel").addHandler(Keep())
trace.set_tracer_provider(TracerProvider())
mine = TracerProvider()
handle = configure(database_url=URL, logs=False, otlp=False, tracer_provider=mine)
with workflow_run("passed", tracer_provider=handle.tracer_provider):
    pass
print(json.dumps({"recorded": runs(handle), "said": records}))
handle.shutdown(2000)
""",
    )
    assert result["recorded"] == ["passed"]
    assert any("tracer_provider=" in message for message in result["said"])  # type: ignore[union-attr]
