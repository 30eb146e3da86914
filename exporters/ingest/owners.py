"""Who owns a run: the service and trace that first wrote it, so that no other sender rewrites it.

In process, a run id is chosen by the code that runs the workflow; through ingest it is only an
attribute any sender can set. A run therefore belongs to the ``(service, trace id)`` of its
first span — the values its row stores — and a span that names the run from another service or
another trace is a *conflict*: :class:`RunOwners` says so and ingest keeps it out of the
history (counted and logged once per run). The owners of recently seen runs are kept in memory
(bounded, least recently used first out); a run not in memory is looked up in
``workflow_history``, so the rule survives a restart of ingest and holds between replicas
(each run's spans are routed to one replica; another replica sees the row). On MariaDB and
MySQL, whose collations compare run ids without case, run ids are compared without case too.
Two replicas that
receive the first spans of one run id from two senders within the same instant could both
accept them: the later snapshot then follows the upsert's usual ordering rules.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from exporters.db.schema import workflow_history

__all__ = ["Owner", "RunOwners"]

Owner = tuple[str | None, str]
"""``(service name as the row stores it, trace id as 32 hex digits)``."""

_LOOKUP_CHUNK = 500
_READERS = 4


class RunOwners:
    """The owner of each run ingest has seen or looked up.

    Args:
        database_url: the history database (read to find the owner of a run not in memory).
        engine_factory: makes the engine for those reads.
        kept: owners kept in memory at most.
    """

    def __init__(
        self,
        database_url: str | URL,
        engine_factory: Callable[[str | URL], Any],
        kept: int = 100_000,
    ) -> None:
        self._url = database_url
        self._engine_factory = engine_factory
        self._engine: Engine | None = None
        self._kept = kept
        self._owners: OrderedDict[str, Owner] = OrderedDict()
        self._lock = threading.Lock()
        # MariaDB's and MySQL's default collations compare run ids without case: one row there
        self._fold = make_url(database_url).get_backend_name() in ("mysql", "mariadb")
        # reads run here, so that a request waits for a hung database no longer than it asks
        self._pool = ThreadPoolExecutor(_READERS, thread_name_prefix="flowtel-ingest-owners")

    def conflicts(self, claims: Sequence[tuple[str, Owner]], timeout: float) -> list[bool]:
        """For each ``(run id, owner)`` of *claims*, in order, whether it conflicts with the
        run's owner; a run without one is claimed by the first claim that names it. Reading
        the owners of runs not in memory takes *timeout* seconds at most.

        Raises:
            SQLAlchemyError: the database could not be read (the caller answers "retry").
            TimeoutError: the database did not answer within *timeout* (idem).
        """
        if self._fold:
            claims = [(run_id.casefold(), owner) for run_id, owner in claims]
        with self._lock:
            unknown = {run_id for run_id, _ in claims if run_id not in self._owners}
        stored = self._pool.submit(self._lookup, unknown).result(timeout) if unknown else {}
        if self._fold:
            stored = {run_id.casefold(): owner for run_id, owner in stored.items()}
        answers: list[bool] = []
        with self._lock:
            owners = self._owners
            for run_id, owner in stored.items():
                owners.setdefault(run_id, owner)
            for run_id, owner in claims:
                known = owners.setdefault(run_id, owner)
                owners.move_to_end(run_id)
                answers.append(known != owner)
            while len(owners) > self._kept:
                owners.popitem(last=False)
        return answers

    def _lookup(self, run_ids: Iterable[str]) -> dict[str, Owner]:
        engine = self._engine
        if engine is None:
            engine = self._engine = self._engine_factory(self._url)
        ids = sorted(run_ids)
        try:
            return _read(engine, ids)
        except SQLAlchemyError:
            if not inspect(engine).has_table(workflow_history.name):
                return {}  # no table yet: the writer is creating it, and no run has an owner
        return _read(engine, ids)  # created meanwhile (or a passing error): once more

    def close(self) -> None:
        """Release the threads and the engine."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._engine is not None:
            self._engine.dispose()


def _read(engine: Engine, ids: list[str]) -> dict[str, Owner]:
    t = workflow_history
    found: dict[str, Owner] = {}
    with engine.connect() as connection:
        for offset in range(0, len(ids), _LOOKUP_CHUNK):
            query = select(t.c.run_id, t.c.service_name, t.c.trace_id).where(
                t.c.run_id.in_(ids[offset : offset + _LOOKUP_CHUNK])
            )
            for run_id, service, trace_id in connection.execute(query):
                if trace_id is not None:  # rows imported from the old table: no owner
                    found[str(run_id)] = (service, str(trace_id))
    return found
