"""exporters.query.error_types: the one short form of an error type, for CLI and web."""

from __future__ import annotations

import pytest

from exporters.query.error_types import short_error_type


@pytest.mark.parametrize(
    ("full", "short"),
    [("maas.client.errors.CommissioningTimeoutError", "CommissioningTimeoutError"),
     ("builtins.TimeoutError", "TimeoutError"), ("TimeoutError", "TimeoutError"),
     ("app.Outer.Inner", "Inner"), ("", ""), (None, None)],
)  # fmt: skip
def test_short_error_type_keeps_the_class_name_only(full: str | None, short: str | None) -> None:
    assert short_error_type(full) == short
