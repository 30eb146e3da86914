"""Finding one run from what a person types: a run id, a unique prefix of one, or a workflow id.

:func:`find_run` tries, in order, the full run id, the workflow id (its latest run) and a
run-id prefix of at least :data:`MIN_PREFIX_LENGTH` characters, every one through an index (a
prefix through a range on the unique ``run_id`` index, with a ``LIKE`` fallback for collations
that order differently). Candidates are re-checked in Python because MariaDB compares strings
case-insensitively. A reference that finds nothing raises :class:`RunNotFoundError` with the
closest recent id; a prefix of several runs raises :class:`AmbiguousRunError`.
:func:`unique_prefixes` gives the short ids tables show: each one resolves, through
:func:`find_run`, to the run it stands for.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, case, or_, select
from sqlalchemy.engine import Connection

from exporters.db.schema import workflow_history
from exporters.errors import MIN_PREFIX_LENGTH, AmbiguousRunError, RunNotFoundError
from exporters.query.records import MatchedBy

__all__ = [
    "MIN_PREFIX_LENGTH",
    "SHORT_ID_LENGTH",
    "AmbiguousRunError",
    "RunNotFoundError",
    "find_run",
    "newest_first",
    "unique_prefixes",
]


SHORT_ID_LENGTH = 8
"""How many leading characters of a run id tables show, unless more are needed to be unique."""

_SUGGESTION_POOL = 2000  # most recently written ids compared against an unknown reference
_AMBIGUOUS_SHOWN = 10
_PREFIX_BATCH = 100  # prefixes per query in unique_prefixes
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


def _shared(a: str, b: str) -> int:
    """How many leading characters *a* and *b* share."""
    same = itertools.takewhile(lambda pair: pair[0] == pair[1], zip(a, b, strict=False))
    return sum(1 for _ in same)


def _matching(conn: Connection, prefixes: Sequence[str]) -> set[str]:
    """The run ids that start with any of *prefixes* (re-checked: MariaDB ignores case)."""
    found: set[str] = set()
    for start in range(0, len(prefixes), _PREFIX_BATCH):
        batch = prefixes[start : start + _PREFIX_BATCH]
        query = select(_H.run_id).where(or_(*(and_(*_prefix_filters(p)) for p in batch)))
        found.update(r for r in conn.scalars(query) if any(r.startswith(p) for p in batch))
    return found


def unique_prefixes(
    conn: Connection, run_ids: Sequence[str], length: int = SHORT_ID_LENGTH
) -> dict[str, str]:
    """The shortest prefix of each run id, at least *length* long, that designates only it.

    A shown prefix matches no other run id in the database, is no other run's exact id and no
    workflow id, so ``flowtel show <prefix>`` opens the run it stands for. An id shorter than
    *length*, or one that needs every character, is shown whole.
    """
    shown = {run_id: run_id[:length] for run_id in run_ids}
    for _ in range(3):  # a workflow id equal to a prefix may need one more character
        pending = sorted({p for r, p in shown.items() if p != r})
        if not pending:
            break
        others = _matching(conn, pending)
        for run_id, prefix in shown.items():
            clashes = [o for o in others if o != run_id and o.startswith(prefix)]
            if clashes:
                need = max(_shared(run_id, o) for o in clashes) + 1
                shown[run_id] = run_id[: min(len(run_id), need)]
        prefixes = [p for r, p in shown.items() if p != r]
        taken = set(conn.scalars(select(_H.workflow_id).where(_H.workflow_id.in_(prefixes))))
        if not taken & set(prefixes):
            break
        for run_id, prefix in shown.items():
            if prefix in taken and prefix != run_id:
                shown[run_id] = run_id[: len(prefix) + 1]
    return shown


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
