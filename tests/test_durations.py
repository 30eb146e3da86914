"""One duration grammar for ``--since``/``--until`` and both ``--older-than`` options.

The same table of accepted and rejected texts is checked against the parser, against
:func:`~exporters.cli._common.parse_when` (a duration counts back from a fixed clock) and
through every option on the command line, against a database file that does not exist, so
that only the option's parsing decides the exit status.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from exporters import create_schema, make_engine
from exporters.cli import main
from exporters.cli._common import Duration, When, parse_when
from exporters.ops.durations import DURATION_FORMS, MAX_DURATION, duration_text, parse_duration

T0 = dt.datetime(2026, 11, 8, 12, 0, tzinfo=dt.UTC)

ACCEPTED: list[tuple[str, dt.timedelta]] = [
    ("90", dt.timedelta(seconds=90)),
    ("30s", dt.timedelta(seconds=30)),
    ("15m", dt.timedelta(minutes=15)),
    ("2h", dt.timedelta(hours=2)),
    ("7d", dt.timedelta(days=7)),
    ("1w", dt.timedelta(weeks=1)),
    ("1.5h", dt.timedelta(minutes=90)),
    ("0.25s", dt.timedelta(milliseconds=250)),
    (".5m", dt.timedelta(seconds=30)),
    ("2.5", dt.timedelta(seconds=2.5)),
    (" 36H ", dt.timedelta(hours=36)),
    ("10 m", dt.timedelta(minutes=10)),
    ("0.000001s", dt.timedelta(microseconds=1)),
    ("365000d", MAX_DURATION),
]
"""Texts every duration option accepts, and the duration each one means."""

TOO_LONG = ["365001d", "9" * 400]
"""Durations longer than :data:`~exporters.ops.durations.MAX_DURATION`."""

REJECTED = [
    *TOO_LONG,
    "",
    "   ",
    "soon",
    "0",
    "0s",
    "0.0000001s",
    "-5d",
    "+5d",
    "1y",
    "10min",
    "1e3",
    "1.",
    "1.5.2h",
    "1d2h",
    "h",
    "\u0663h",  # an Arabic-Indic digit three
    "inf",
    "nan",
]
"""Texts every duration option rejects."""

OPTIONS = [
    ("runs", "--since"),
    ("runs", "--until"),
    ("stats", "--since"),
    ("reap", "--older-than"),
    ("db prune", "--older-than"),
]
"""Every command-line option that takes a duration."""


def invoke(
    tmp_path: Path, command: str, option: str, text: str, database: str = "none.db"
) -> Result:
    """Run ``flowtel COMMAND OPTION=TEXT`` on *database* (by default a file that does not exist)."""
    args = [*command.split(), "--db", f"sqlite:///{tmp_path / database}", f"{option}={text}"]
    return CliRunner().invoke(main, [*args, "--json"] if command == "reap" else args)


@pytest.mark.parametrize(("text", "delta"), ACCEPTED)
def test_parse_duration_accepts(text: str, delta: dt.timedelta) -> None:
    """A number with an optional unit; plain numbers are seconds; decimals are exact."""
    assert parse_duration(text) == delta


@pytest.mark.parametrize("text", REJECTED)
def test_parse_duration_rejects_saying_what_is_accepted(text: str) -> None:
    """Anything else is a ValueError naming the text and, unless too long, the forms."""
    expected = "is too long" if text in TOO_LONG else "s, m, h, d or w"
    with pytest.raises(ValueError, match=expected) as raised:
        parse_duration(text)
    assert repr(text) in str(raised.value)


@pytest.mark.parametrize(("text", "delta"), ACCEPTED)
def test_since_counts_the_same_durations_back_from_now(text: str, delta: dt.timedelta) -> None:
    """``--since`` reads a duration exactly as ``--older-than`` does."""
    assert parse_when(text, now=T0) == T0 - delta


@pytest.mark.parametrize("text", REJECTED)
def test_since_rejects_the_same_texts(text: str) -> None:
    """What is not a duration (nor an ISO 8601 time) is not a time either."""
    with pytest.raises(ValueError, match=r"is not a time|is too long"):
        parse_when(text, now=T0)


@pytest.mark.parametrize(("text", "delta"), ACCEPTED)
def test_duration_text_writes_the_grammar_back(text: str, delta: dt.timedelta) -> None:
    """What :func:`duration_text` writes parses back to the same duration."""
    assert parse_duration(duration_text(delta)) == delta


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(seconds=90), "90s"),
        (dt.timedelta(minutes=10), "10m"),
        (dt.timedelta(hours=36), "36h"),
        (dt.timedelta(weeks=2), "14d"),
        (dt.timedelta(milliseconds=1500), "1.5s"),
    ],
)
def test_duration_text_uses_the_largest_whole_unit(delta: dt.timedelta, text: str) -> None:
    assert duration_text(delta) == text


@pytest.mark.parametrize(("command", "option"), OPTIONS)
def test_every_duration_option_uses_the_shared_parameter_type(command: str, option: str) -> None:
    """No option parses durations its own way."""
    found: click.Command = main
    for name in command.split():
        assert isinstance(found, click.Group)
        found = found.commands[name]
    (param,) = [p for p in found.params if option in p.opts]
    assert type(param.type) is (When if option in ("--since", "--until") else Duration)


@pytest.mark.parametrize(("text", "delta"), ACCEPTED)
@pytest.mark.parametrize(("command", "option"), OPTIONS)
def test_every_option_accepts_the_table(
    tmp_path: Path, command: str, option: str, text: str, delta: dt.timedelta
) -> None:
    """Each accepted text runs the command on an empty history (which has nothing to do)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    create_schema(engine)
    engine.dispose()
    result = invoke(tmp_path, command, option, text, database="empty.db")
    assert result.exit_code == 0, result.output
    if command == "reap":
        assert json.loads(result.output)["older_than_s"] == delta.total_seconds()


@pytest.mark.parametrize("text", REJECTED)
@pytest.mark.parametrize(("command", "option"), OPTIONS)
def test_every_option_rejects_the_table(
    tmp_path: Path, command: str, option: str, text: str
) -> None:
    """Each rejected text is a usage error (exit 2) on that option, saying what is accepted."""
    result = invoke(tmp_path, command, option, text)
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert ("365000d" if text in TOO_LONG else DURATION_FORMS) in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_an_iso_date_wins_over_seconds_in_since() -> None:
    """``20261101`` stays the basic ISO date it always was, not 20,261,101 seconds."""
    assert parse_when("20261101", now=T0) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert parse_when("2026110", now=T0) == T0 - dt.timedelta(seconds=2_026_110)
