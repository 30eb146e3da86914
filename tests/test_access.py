"""exporters.access: the loopback test and the token check that flowtel serve and ingest share."""

from __future__ import annotations

import base64

import pytest

from exporters import access


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("LocalHost", True), ("::1", True),
     ("[::1]", True), ("127.0.0.2", True), (" 127.0.0.1 ", True), ("localhost.", True),
     ("0.0.0.0", False), ("::", False), ("[::]", False), ("192.168.1.5", False),
     ("example.com", False), ("", False), ("localhost.example.com", False)],
)  # fmt: skip
def test_is_loopback_accepts_only_loopback_hosts_in_any_case_or_brackets(
    host: str, loopback: bool
) -> None:
    assert access.is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("header", "matches"),
    [("Bearer tok", True), ("bearer tok", True), ("BEARER  tok ", True),
     ("Basic " + base64.b64encode(b"anyone:tok").decode(), True),
     ("basic " + base64.b64encode(b":tok").decode(), True),
     ("Bearer nope", False), ("Bearer tok2", False), ("tok", False), ("Bearer", False),
     ("", False), (None, False), ("Basic !!!not-base64", False),
     ("Basic " + base64.b64encode(b"tok").decode(), False),
     ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), False), ("Bearer t\u00f6k", False)],
)  # fmt: skip
def test_token_matches_bearer_in_any_case_or_basic_password_only(
    header: str | None, matches: bool
) -> None:
    assert access.token_matches(header, "tok") is matches


def test_token_matches_compares_through_hmac_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = access.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    assert access.token_matches("Bearer tok", "tok")
    assert not access.token_matches("Bearer nope", "tok")
    assert not access.token_matches(None, "tok")
    assert calls == [(b"tok", b"tok"), (b"nope", b"tok"), (b"", b"tok")]
