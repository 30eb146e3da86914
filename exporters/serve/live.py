"""The live stream's view of the runs: one look at the database per interval, shared.

:class:`LiveFeed` polls :func:`~exporters.serve.queries.live_snapshot` for ``/api/events``.
Every stream, on the runs list or on one run's page (``?run=``), reads the same snapshot, taken
at most once per poll interval however many pages are open: it holds the runs in progress, the
newest few, and every run an open run page follows; while the database cannot be read, one
failed attempt per second answers every stream. Streams are counted: past ``max_streams``
open at once :meth:`LiveFeed.slot` raises :class:`TooManyStreams` (503). :meth:`LiveFeed.events`
turns successive snapshots into Server-Sent Events for one stream: ``run`` when a run changes
(or appears), ``ready`` once the state the page was drawn with has been described,
``unavailable`` while the database cannot be read.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.sse import ServerSentEvent
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from exporters.db.driver_errors import describe
from exporters.query.records import RunSummary
from exporters.serve.queries import live_snapshot
from instrumentation.attributes import ACTIVE_RUN_STATUSES

__all__ = ["DEFAULT_MAX_STREAMS", "RETRY_S", "LiveFeed", "TooManyStreams"]

RETRY_S = 5
"""Seconds a client waits before it asks again while the database cannot be read."""
DEFAULT_MAX_STREAMS = 100
"""How many ``/api/events`` streams one server holds open at once unless told otherwise."""
NEWEST = 20
"""How many of the newest runs each snapshot holds besides the runs in progress."""


class TooManyStreams(RuntimeError):
    """``/api/events`` is asked for one stream more than the server holds (503)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this server already holds {limit} live streams, its limit: close a page, or "
            f"restart flowtel serve with a higher --max-streams"
        )
        self.limit = limit


@dataclasses.dataclass
class _Snapshot:
    """The latest look at the runs, shared by every stream."""

    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    at: float = float("-inf")
    runs: dict[str, RunSummary] = dataclasses.field(default_factory=dict)
    covered: set[str] = dataclasses.field(default_factory=set)
    active: set[str] = dataclasses.field(default_factory=set)
    failed_at: float = float("-inf")
    failure: SQLAlchemyError | None = None


class LiveFeed:
    """The snapshots behind ``/api/events`` on *engine*, refreshed every *poll_interval* s,
    for at most *max_streams* streams at once."""

    def __init__(
        self, engine: Engine, poll_interval: float, max_streams: int = DEFAULT_MAX_STREAMS
    ) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self.max_streams = max_streams
        self.open_streams = 0
        self._shared = _Snapshot()
        self._followed: collections.Counter[str] = collections.Counter()
        self._pause = max(poll_interval, 1.0)
        """Seconds between two attempts while the database cannot be read."""

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the *max_streams* places for as long as a stream is open.

        Raises:
            TooManyStreams: every place is taken.
        """
        if self.open_streams >= self.max_streams:
            raise TooManyStreams(self.max_streams)
        self.open_streams += 1
        try:
            yield
        finally:
            self.open_streams -= 1

    def _look(self, wanted: set[str]) -> dict[str, RunSummary]:
        with self.engine.connect() as conn:
            return live_snapshot(conn, wanted, newest=NEWEST)

    async def snapshot(self, follow: set[str]) -> dict[str, RunSummary]:
        """The shared snapshot, covering *follow*: one look per poll interval at most, unless
        a stream needs a run the last look did not cover. A look that failed is shared too:
        its error is raised again, without a new attempt, until the retry pause has passed.

        Raises:
            SQLAlchemyError: the database cannot be read.
        """
        feed = self._shared
        async with feed.lock:
            if feed.failure is not None and time.monotonic() - feed.failed_at < self._pause * 0.9:
                raise feed.failure
            fresh = time.monotonic() - feed.at < self.poll_interval * 0.9
            if fresh and follow <= feed.covered:
                return feed.runs
            wanted = feed.active | set(self._followed) | follow
            try:
                runs = await run_in_threadpool(self._look, wanted)
            except SQLAlchemyError as exc:
                feed.failure, feed.failed_at = exc, time.monotonic()
                raise
            feed.failure = None
            feed.runs, feed.at, feed.covered = runs, time.monotonic(), wanted | set(runs)
            feed.active = {k for k, v in runs.items() if v.status in ACTIVE_RUN_STATUSES}
            return runs

    async def events(
        self, disconnected: Callable[[], Awaitable[bool]], run: str | None
    ) -> AsyncIterator[ServerSentEvent]:
        """The events of one stream: every run's changes, or only *run*'s."""
        if run is not None:
            self._followed[run] += 1
        try:
            async for event in self._events(disconnected, run):
                yield event
        finally:
            if run is not None:
                self._followed[run] -= 1
                if self._followed[run] <= 0:
                    del self._followed[run]

    async def _events(
        self, disconnected: Callable[[], Awaitable[bool]], run: str | None
    ) -> AsyncIterator[ServerSentEvent]:
        seen: dict[str, tuple[Any, ...]] = {}
        follow: set[str] = {run} if run else set()
        first = True
        while not await disconnected():
            try:
                snapshot = await self.snapshot(follow)
            except SQLAlchemyError as exc:
                yield ServerSentEvent(
                    event="unavailable",
                    data={"message": describe(exc, self.engine.url)},
                    retry=RETRY_S * 1000,
                )
                await asyncio.sleep(self._pause)
                continue
            if run is not None:
                snapshot = {k: v for k, v in snapshot.items() if k == run}
            for run_id, summary in snapshot.items():
                key = _state(summary)
                active = summary.status in ACTIVE_RUN_STATUSES
                if seen.get(run_id) != key and (not first or active or run):
                    yield ServerSentEvent(event="run", id=run_id, data=summary.to_json())
                seen[run_id] = key
            if first:
                yield ServerSentEvent(event="ready", data={"watching": len(snapshot)})
                first = False
            follow = {k for k, v in snapshot.items() if v.status in ACTIVE_RUN_STATUSES}
            if run:
                follow.add(run)
            await asyncio.sleep(self.poll_interval)


def _state(run: RunSummary) -> tuple[Any, ...]:
    return (run.status, run.steps_completed, run.current_step, run.completed_at, run.total_steps)
