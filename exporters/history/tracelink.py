"""The run's trace link: ``trace_url_template`` checked once, rendered per row without raising.

``FLOWTEL_TRACE_URL_TEMPLATE`` (or ``trace_url_template=``) is a :meth:`str.format` template
with two fields, ``{trace_id}`` and ``{span_id}``. :func:`check_trace_url_template` refuses any
other field, a stray brace or a format spec at configuration time, with an error saying what
to write instead; :func:`trace_url` renders a checked template and, should rendering fail
anyway, returns ``None`` (the row is written without its link) rather than raise on the
writer's thread.
"""

from __future__ import annotations

import string

__all__ = ["TRACE_URL_FIELDS", "check_trace_url_template", "trace_url"]

TRACE_URL_FIELDS = ("trace_id", "span_id")
"""The fields a trace URL template may name."""

_EXAMPLE = "http://localhost:16686/trace/{trace_id}"


def check_trace_url_template(template: str | None) -> None:
    """Raise ``ValueError`` naming the problem unless *template* renders with the two fields.

    Args:
        template: the template, or ``None`` (no link: always fine).
    """
    if template is None:
        return
    problem: str | None = None
    try:
        for _, field, spec, conversion in string.Formatter().parse(template):
            if field is None:
                continue
            if field not in TRACE_URL_FIELDS:
                problem = f"unknown field {{{field}}}"
            elif spec or conversion:
                problem = f"{{{field}}} takes no format spec or conversion"
            if problem:
                break
    except ValueError as exc:  # a single '{' or '}'
        problem = str(exc)
    if problem is None:
        try:
            template.format(trace_id="0" * 32, span_id="0" * 16)
        except (ValueError, KeyError, IndexError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        raise ValueError(
            f"trace URL template {template!r} (FLOWTEL_TRACE_URL_TEMPLATE or "
            f"trace_url_template=) cannot be used: {problem}; it may name only "
            f"{{trace_id}} and {{span_id}}, e.g. {_EXAMPLE!r} (a literal brace is written "
            "'{{' or '}}')"
        )


def trace_url(template: str | None, trace_id: str, span_id: str) -> str | None:
    """The link for one run, or ``None`` without a template or when it does not render."""
    if not template:
        return None
    try:
        return template.format(trace_id=trace_id, span_id=span_id)
    except (ValueError, KeyError, IndexError, AttributeError):
        return None
