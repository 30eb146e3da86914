"""The query parameters ``flowtel serve`` shares between pages and API, checked once.

:func:`run_filters` reads ``flowtel runs``'s filters (``Filters``), :func:`parse_when` the
``since``/``until`` forms, :func:`stats_report` the stats page's and ``/api/stats``'s
parameters; a value the server cannot use raises :class:`BadParameter`, which the error
handlers answer with 400 and a JSON body (API) or an error page.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Depends, Query

from exporters.ops.durations import DURATION_FORMS, parse_duration
from exporters.ops.durations import parse_when as parse_when_text
from exporters.query.records import StatsReport
from exporters.query.store import HistoryStore
from exporters.query.where import parse_where
from exporters.serve.queries import RunFilters
from instrumentation import RunStatus

__all__ = [
    "MAX_PAGE",
    "BadParameter",
    "Cursor",
    "Filters",
    "Limit",
    "Top",
    "parse_when",
    "run_filters",
    "stats_report",
]

MAX_PAGE = 500
"""The most runs one page or ``/api/runs`` answer holds."""


class BadParameter(ValueError):
    """A query parameter with a value the server cannot use (400, JSON body)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


def parse_when(name: str, text: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """``since``/``until`` as ``flowtel runs`` takes them: ISO 8601 (UTC unless it says) or a
    duration back from now (``30m``, ``24h``, ``7d``).

    Raises:
        BadParameter: *text* is neither.
    """
    if text is None or not text.strip():
        return None
    try:
        return parse_when_text(text, now)
    except ValueError:
        raise BadParameter(
            name,
            f"{text[:80]!r} is not a time: give an ISO 8601 date or time such as 2026-11-01, "
            f"or a duration back from now: {DURATION_FORMS}",
        ) from None


def _text(value: str | None) -> str | None:
    return value if value else None


def run_filters(
    status: Annotated[str | None, Query(description="Only runs with this status.")] = None,
    workflow: Annotated[str | None, Query(description="Only runs of this workflow name.")] = None,
    workflow_id: Annotated[str | None, Query(description="Only runs of this workflow id.")] = None,
    server_id: Annotated[str | None, Query(description="Only runs about this server.")] = None,
    device_type: Annotated[str | None, Query(description="Only runs of this device type.")] = None,
    since: Annotated[
        str | None, Query(description="Started at or after: 30m, 24h, 7d, ISO.")
    ] = None,
    until: Annotated[str | None, Query(description="Started before: 30m, 24h, 7d, ISO.")] = None,
    where: Annotated[
        list[str] | None,
        Query(
            description="KEY=VALUE: only runs whose context has KEY with this value, as text "
            "(repeatable; all must match)."
        ),
    ] = None,
) -> RunFilters:
    """``flowtel runs``'s filters from the query string (empty values mean not filtered)."""
    statuses = [s.value for s in RunStatus]
    if status and status not in statuses:
        raise BadParameter("status", f"status must be one of {', '.join(statuses)}")
    try:
        pairs = parse_where(item for item in where or () if item)
    except ValueError as exc:
        raise BadParameter("where", str(exc).replace("--where", "where", 1)) from None
    return RunFilters(
        status=_text(status),
        workflow=_text(workflow),
        workflow_id=_text(workflow_id),
        server_id=_text(server_id),
        device_type=_text(device_type),
        since=parse_when("since", since),
        until=parse_when("until", until),
        where=tuple(pairs.items()),
    )


Filters = Annotated[RunFilters, Depends(run_filters)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most runs per page.")]
Cursor = Annotated[str | None, Query(description="next_cursor of the previous page.")]
Top = Annotated[int, Query(ge=0, le=100)]


def stats_report(
    store: HistoryStore,
    since: str,
    until: str | None,
    workflow: str | None,
    by: str | None,
    top: int,
    every: str | None = None,
) -> StatsReport:
    """``flowtel stats``'s report for the stats page and ``/api/stats`` (``every``: the trend's
    interval, ``flowtel stats --every``'s grammar).

    Raises:
        BadParameter: *since*, *until*, *by* or *every* cannot be used.
    """
    start = parse_when("since", since) or parse_when("since", "7d")
    assert start is not None
    interval = None
    if every:
        try:
            interval = parse_duration(every)
        except ValueError as exc:
            raise BadParameter("every", str(exc)) from None
    try:
        return store.stats(
            since=start, until=parse_when("until", until), workflow=workflow or None,
            by=by or None, top=top, every=interval,
        )  # fmt: skip
    except ValueError as exc:
        raise BadParameter("every" if "every" in str(exc) else "by", str(exc)) from None
