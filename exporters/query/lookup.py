"""Finding one run from what a person types: a run id, a unique prefix of one, or a workflow id.

:func:`find_run` tries, in order, the full run id, the workflow id (its latest run) and a
run-id prefix of at least :data:`MIN_PREFIX_LENGTH` characters, every one through an index (a
prefix through a range on the unique ``run_id`` index, with a ``LIKE`` fallback for collations
that order differently). Candidates are re-checked in Python because MariaDB compares strings
case-insensitively. A reference that finds nothing raises :class:`RunNotFoundError` with the
closest recent id; a prefix of several runs raises :class:`AmbiguousRunError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, case, select
from sqlalchemy.engine import Connection

from exporters.db.schema import workflow_history
from exporters.errors import MIN_PREFIX_LENGTH, AmbiguousRunError, RunNotFoundError
from exporters.query.records import MatchedBy

__all__ = [
    "MIN_PREFIX_LENGTH",
    "AmbiguousRunError",
    "RunNotFoundError",
    "find_run",
    "newest_first",
]


_SUGGESTION_POOL = 2000  # most recently written ids compared against an unknown reference
_AMBIGUOUS_SHOWN = 10
_H = workflow_history.c


def newest_first() -> tuple[ColumnElement[Any], ...]:
    """An ORDER BY for a few rows: newest start first, runs without a start last.

    The CASE puts NULL ``started_at`` last on every dialect (MariaDB has no ``NULLS LAST``)
    but keeps an index from providing the order, so use it on small candidate sets only.
    """
    return (case((_H.started_at.is_(None), 1), else_=0), _H.started_at.desc(), _H.id.desc())


def _prefix_filters(ref: str) -> tuple[ColumnElement[bool], ...]:
    """``run_id LIKE 'ref%'`` plus a range the ``run_id`` index can serve on every dialect."""
    upper = ref[:-1] + chr(min(ord(ref[-1]) + 1, 0x10FFFF))
    return (_H.run_id >= ref, _H.run_id < upper, _H.run_id.startswith(ref, autoescape=True))


def find_run(
    conn: Connection, ref: str, columns: Sequence[ColumnElement[Any]]
) -> tuple[Row[Any], MatchedBy]:
    """Return the ``workflow_history`` row *ref* designates and how it matched.

    Args:
        conn: a connection to the history database.
        ref: a run id, a run-id prefix or a workflow id, as typed.
        columns: the columns to read; they must include ``run_id`` and ``workflow_id``.

    Raises:
        RunNotFoundError: nothing matches; the error names the closest recent id.
        AmbiguousRunError: *ref* is a prefix of several run ids.
    """
    base = select(*columns)
    row = conn.execute(base.where(_H.run_id == ref)).first()
    if row is not None and row.run_id == ref:
        return row, "run_id"
    query = base.where(_H.workflow_id == ref).order_by(*newest_first()).limit(1)
    row = conn.execute(query).first()
    if row is not None and row.workflow_id == ref:
        return row, "workflow_id"
    if len(ref) >= MIN_PREFIX_LENGTH:
        ids: list[str] = []
        for filters in (_prefix_filters(ref), (_H.run_id.startswith(ref, autoescape=True),)):
            found = conn.scalars(select(_H.run_id).where(*filters).limit(_AMBIGUOUS_SHOWN + 1))
            ids = [run_id for run_id in found if run_id.startswith(ref)]
            if ids:
                break
        query = base.where(_H.run_id.in_(ids)).order_by(*newest_first())
        rows = [r for r in conn.execute(query) if r.run_id.startswith(ref)] if ids else []
        if len(rows) > 1:
            raise AmbiguousRunError(ref, [r.run_id for r in rows[:_AMBIGUOUS_SHOWN]])
        if rows:
            return rows[0], "prefix"
    raise RunNotFoundError(ref, _suggest(conn, ref))


def _suggest(conn: Connection, ref: str) -> str | None:
    """The recent run id or workflow id closest to *ref*, if any is close enough."""
    recent = select(_H.run_id, _H.workflow_id).order_by(_H.id.desc()).limit(_SUGGESTION_POOL)
    candidates: dict[str, str] = {}
    for run_id, workflow_id in conn.execute(recent):
        candidates.setdefault(workflow_id, workflow_id)
        # Compare a short reference with the same number of leading characters.
        candidates.setdefault(run_id[: max(len(ref), 8)], run_id)
    close = difflib.get_close_matches(ref, list(candidates), n=1, cutoff=0.6)
    return candidates[close[0]] if close else None
