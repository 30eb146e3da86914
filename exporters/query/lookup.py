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
import functools
import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Row,
    bindparam,
    case,
    literal,
    select,
    union_all,
)
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
_CLASH_PROBE = 11  # run ids read per prefix tried in unique_prefixes
_IN_BATCH = 500  # values per IN (...) list
_PROBE_BATCH = 10  # prefixes per statement: small enough to compile fast, few round trips
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


@functools.cache
def _probe(size: int) -> Executable:
    """*size* range seeks on the run_id index in one statement: ``(run_id, k)`` rows.

    Probe ``k`` reads at most :data:`_CLASH_PROBE` ids in ``[l<k>, h<k>)``; built once per
    size, so it compiles once.
    """
    parts = []
    for k in range(size):
        seek = select(_H.run_id.label("run_id")).where(
            _H.run_id >= bindparam(f"l{k}"), _H.run_id < bindparam(f"h{k}")
        )
        sub = seek.limit(_CLASH_PROBE).subquery()
        parts.append(select(sub.c.run_id, literal(k).label("k")))
    return union_all(*parts)


def _lengthen(conn: Connection, shown: dict[str, str], run_ids: Sequence[str]) -> None:
    """Lengthen the prefixes of *run_ids* in *shown* until no other run id starts with one."""
    pending = [r for r in run_ids if shown[r] != r]
    while pending:
        clashes: dict[str, list[str]] = {}
        for start in range(0, len(pending), _PROBE_BATCH):
            batch = pending[start : start + _PROBE_BATCH]
            padded = batch + [batch[-1]] * (_PROBE_BATCH - len(batch))
            params: dict[str, str] = {}
            for k, run_id in enumerate(padded):
                prefix = shown[run_id]
                params[f"l{k}"] = prefix
                params[f"h{k}"] = prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))
            for other, k in conn.execute(_probe(_PROBE_BATCH), params):
                run_id = padded[k]
                # re-checked in Python: MariaDB compares strings case-insensitively
                if other != run_id and other.startswith(shown[run_id]):
                    clashes.setdefault(run_id, []).append(other)
        for run_id, others in clashes.items():
            need = max(_shared(run_id, other) for other in others) + 1
            shown[run_id] = run_id[: min(len(run_id), need)]
        pending = [r for r in clashes if shown[r] != r]


def _workflow_ids(conn: Connection, values: Sequence[str]) -> set[str]:
    """Which of *values* are some run's workflow id (exactly, whatever the collation)."""
    found: set[str] = set()
    for start in range(0, len(values), _IN_BATCH):
        batch = values[start : start + _IN_BATCH]
        query = select(_H.workflow_id).where(_H.workflow_id.in_(batch))
        found.update(w for w in conn.scalars(query) if w in batch)
    return found


def unique_prefixes(
    conn: Connection, run_ids: Sequence[str], length: int = SHORT_ID_LENGTH
) -> dict[str, str]:
    """The shortest prefix of each run id, at least *length* long, that designates only it.

    A shown prefix matches no other run id in the database, is no other run's exact id and no
    workflow id, so ``flowtel show <prefix>`` opens the run it stands for. An id shorter than
    *length*, or one that needs every character, is shown whole. Each id costs one seek on the
    ``run_id`` index (more only when prefixes clash), :data:`_PROBE_BATCH` seeks a statement,
    plus one batched workflow-id check.
    """
    shown = {run_id: run_id[:length] for run_id in run_ids}
    _lengthen(conn, shown, list(shown))
    for _ in range(3):  # a prefix that is some workflow id takes one more character
        prefixes = sorted({p for r, p in shown.items() if p != r})
        taken = _workflow_ids(conn, prefixes)
        longer = [r for r, p in shown.items() if p in taken and p != r]
        if not longer:
            break
        for run_id in longer:
            shown[run_id] = run_id[: len(shown[run_id]) + 1]
        _lengthen(conn, shown, longer)
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
