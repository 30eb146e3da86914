"""Redaction: the rules, their configuration, and every path by which a value reaches a span."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from instrumentation import workflow_run
from instrumentation.redaction import (
    DEFAULT_SECRET_KEY_PARTS,
    REDACTED,
    Redactor,
    get_redactor,
    mask_url_credentials,
    redact,
    redact_event_dict,
    redaction_processor,
    redactor_from_env,
    set_redactor,
)


@pytest.fixture
def restore_redactor() -> Iterator[None]:
    """Put the process-wide redactor back after a test that swaps it."""
    before = get_redactor()
    yield
    set_redactor(before)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://u:secret@db/x", "postgresql://u:[REDACTED]@db/x"),
        ("redis://:secret@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
        (
            "see mysql+pymysql://app:p@ss/w@db:3306/x now",
            "see mysql+pymysql://app:[REDACTED]@db:3306/x now",
        ),
        ("https://example.com:8443/path", "https://example.com:8443/path"),
        ("password=hunter2 user=bob", "password=[REDACTED] user=bob"),
        ("{'password': 'hunter2', 'user': 'x'}", "{'password': '[REDACTED]', 'user': 'x'}"),
        ('{"bmc_token": "tok", "n": 1}', '{"bmc_token": "[REDACTED]", "n": 1}'),
        ("Authorization: Bearer abc.def", "Authorization: [REDACTED]"),
        ("https://api/x?token=abc&y=1", "https://api/x?token=[REDACTED]&y=1"),
        ("Creds(user='x', api_key='k1')", "Creds(user='x', api_key='[REDACTED]')"),
        (
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\nok",
            "[REDACTED]\nok",
        ),
        ("ValueError: plain message", "ValueError: plain message"),
        ("password=[REDACTED]", "password=[REDACTED]"),
    ],
)
def test_text_masking(text: str, expected: str) -> None:
    """URL passwords, secret assignments and private keys in text are masked; the rest stays."""
    assert get_redactor().redact_text(text) == expected


def test_mask_url_credentials_only_touches_urls() -> None:
    """The URL-only helper leaves assignments alone and masks the password."""
    assert mask_url_credentials("x://a:b@h password=1") == "x://a:[REDACTED]@h password=1"


def test_nested_structures_are_redacted_by_key() -> None:
    """Secret keys anywhere in mappings and lists are replaced; inputs are not mutated."""
    value: dict[str, Any] = {
        "IPMI_Password": "a",
        "credentials": {"password": "b"},
        "hosts": [{"name": "h1", "bmc_token": "c"}, ("tuple", {"cookie": "d"})],
        "server_id": "srv-1",
    }
    clean = redact(value)
    assert clean == {
        "IPMI_Password": REDACTED,
        "credentials": REDACTED,
        "hosts": [{"name": "h1", "bmc_token": REDACTED}, ["tuple", {"cookie": REDACTED}]],
        "server_id": "srv-1",
    }
    assert value["credentials"] == {"password": "b"}


def test_self_referencing_structures_end_in_a_marker() -> None:
    """A list containing itself does not recurse forever."""
    loop: list[Any] = []
    loop.append(loop)
    text = json.dumps(redact(loop))
    assert "nested deeper than" in text


def test_add_remove_replace_and_allow() -> None:
    """Key substrings can be added, removed or replaced; allowed keys are never redacted."""
    assert "session" in DEFAULT_SECRET_KEY_PARTS
    custom = Redactor(extra_key_parts=["ipmi"], remove_key_parts=["session"])
    assert custom.is_secret_key("IPMI_USER")
    assert not custom.is_secret_key("session_id")
    replaced = Redactor(["pin"])
    assert replaced.secret_key_parts == ("pin",)
    assert replaced.is_secret_key("card_PIN") and not replaced.is_secret_key("password")
    allowing = get_redactor().extended(allow=["session_count", "Token_Type"])
    assert not allowing.is_secret_key("session_count")
    assert not allowing.is_secret_key("token_type")
    assert allowing.is_secret_key("session_key")
    assert (
        allowing.redact_text("session_count=5 session=abc") == "session_count=5 session=[REDACTED]"
    )


def test_a_single_string_is_not_a_list_of_parts() -> None:
    """Passing one string where a list belongs is a TypeError, not a list of characters."""
    with pytest.raises(TypeError, match="list of strings"):
        Redactor("password")


def test_environment_configuration() -> None:
    """FLOWTEL_REDACT_KEYS adds (+), removes (-) or replaces; FLOWTEL_REDACT_ALLOW allows."""
    changed = redactor_from_env(
        {"FLOWTEL_REDACT_KEYS": "+ipmi, -session", "FLOWTEL_REDACT_ALLOW": "token_type"}
    )
    assert changed.is_secret_key("ipmi_user") and not changed.is_secret_key("session")
    assert not changed.is_secret_key("token_type") and changed.is_secret_key("token")
    replaced = redactor_from_env({"FLOWTEL_REDACT_KEYS": "pin,cvv,+otp"})
    assert replaced.secret_key_parts == ("pin", "cvv", "otp")
    assert redactor_from_env({}).secret_key_parts == DEFAULT_SECRET_KEY_PARTS


def test_set_redactor_rejects_other_types(restore_redactor: None) -> None:
    """Only a Redactor can be installed."""
    with pytest.raises(TypeError, match="takes a Redactor"):
        set_redactor({"password"})  # type: ignore[arg-type]


def test_event_dict_redaction() -> None:
    """A structlog event dict: secret keys, URLs in the message, exception objects."""
    event = {
        "event": "connecting to postgresql://u:secret@db/x",
        "db_password": "pw",
        "error": ValueError("token=abc"),
        "exc_info": True,
        "n": 3,
    }
    clean = redact_event_dict(event)
    assert clean == {
        "event": "connecting to postgresql://u:[REDACTED]@db/x",
        "db_password": REDACTED,
        "error": "ValueError: token=[REDACTED]",
        "exc_info": True,
        "n": 3,
    }
    assert event["db_password"] == "pw"


def test_structlog_processor_masks_rendered_lines() -> None:
    """In a structlog chain (after format_exc_info) nothing secret reaches the output."""
    captured: list[str] = []

    def sink(logger: Any, method_name: str, event_dict: Any) -> str:
        captured.append(event_dict)
        return ""

    log = structlog.wrap_logger(
        structlog.PrintLogger(),
        processors=[
            structlog.processors.format_exc_info,
            redaction_processor,
            structlog.processors.JSONRenderer(),
            sink,
        ],
    )
    try:
        raise ConnectionError("cannot reach postgresql://u:secret@db/x")
    except ConnectionError:
        log.error("failed", bmc_token="tok-1", context={"password": "pw-2"}, exc_info=True)
    (line,) = captured
    for secret in ("secret", "tok-1", "pw-2"):
        assert secret not in line
    assert "postgresql://u:[REDACTED]@db/x" in line


def _span(exporter: InMemorySpanExporter, name: str) -> Any:
    return next(s for s in exporter.get_finished_spans() if s.name == name)


def test_every_span_path_is_redacted(span_exporter: InMemorySpanExporter) -> None:
    """Context, set_context, descriptions, step and run messages, exceptions, statuses."""
    url = "postgresql://u:secret@db/x"
    with (
        pytest.raises(RuntimeError),
        workflow_run(
            "wf", context={"db": url, "ipmi_password": "QQpw1"}, description=f"uses {url}"
        ) as run,
    ):
        run.set_context(bmc_token="QQtok2", note=f"token={'QQtok3'}")
        with run.step("a", description=f"password={'QQpw4'}") as step:
            step.set_message(f"connected to {url}")
        with run.step("b") as step:
            step.fail(f"api_key={'QQk5'}")
        with run.step("c") as step:
            step.skip(f"cookie={'QQc6'}")
        with run.step("d"):
            raise RuntimeError(f"cannot reach {url}")
    spans = [s.to_json() for s in span_exporter.get_finished_spans()]
    blob = "\n".join(spans)
    for secret in ("secret", "QQpw1", "QQtok2", "QQtok3", "QQpw4", "QQk5", "QQc6"):
        assert secret not in blob, secret
    run_span = _span(span_exporter, "wf")
    assert json.loads(run_span.attributes["workflow.context_json"])["ipmi_password"] == REDACTED
    assert "[REDACTED]" in run_span.status.description
    assert "[REDACTED]" in _span(span_exporter, "d").events[0].attributes["exception.stacktrace"]


def test_run_fail_message_is_redacted(span_exporter: InMemorySpanExporter) -> None:
    """run.fail(...) is a status description: masked too."""
    with workflow_run("wf") as run:
        run.fail("lost session=abc123", error_type="X" * 400)
    (span,) = span_exporter.get_finished_spans()
    assert span.status.description == "lost session=[REDACTED]"
    assert len(span.attributes["error.type"]) == 255


def test_custom_redactor_applies_to_new_runs(
    span_exporter: InMemorySpanExporter, restore_redactor: None
) -> None:
    """set_redactor changes what later runs record."""
    set_redactor(get_redactor().extended(add=["serial"], allow=["session_count"]))
    with workflow_run("wf", context={"bmc_serial": "S1", "session_count": 2}):
        pass
    (span,) = span_exporter.get_finished_spans()
    context = json.loads(span.attributes["workflow.context_json"])
    assert context == {"bmc_serial": REDACTED, "session_count": 2}


def test_exc_info_is_left_for_the_exception_renderer() -> None:
    """An exc_info tuple stays a tuple (a list would render as a repr, not a traceback)."""
    try:
        raise ValueError("token=abc")
    except ValueError as error:
        info = (type(error), error, error.__traceback__)
    assert redact_event_dict({"event": "x", "exc_info": info})["exc_info"] is info
