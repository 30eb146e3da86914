"""The live stream: ``/api/events``, Server-Sent Events from the shared live feed.

``run`` (a RunSummary) whenever a run in progress changes or a new run appears,
``unavailable`` while the database cannot be read; with ``?run=`` only that run's changes.
Every stream reads the one shared snapshot of :class:`~exporters.serve.live.LiveFeed`, and
holds one of its ``max_streams`` places while open: past them the answer is 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from exporters.serve.state import State

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["api"])


def followed_run(
    state: State, run: Annotated[str | None, Query(description="Only this run.")] = None
) -> str | None:
    """The run id the live stream follows (resolved like ``flowtel show``), or ``None``."""
    if run is None:
        return None
    return state.store.get_run(run).run_id


Followed = Annotated[str | None, Depends(followed_run)]


async def stream_slot(state: State) -> AsyncIterator[None]:
    """One of the server's live-stream places, held until the stream ends (503 when none is
    left: :class:`~exporters.serve.live.TooManyStreams`). Async, so that it runs on the event
    loop, where the count is kept, and never on a worker thread."""
    with state.live.slot():
        yield


@router.get(
    "/events",
    response_class=EventSourceResponse,
    dependencies=[Depends(stream_slot)],
    responses={503: {"description": "Too many live streams open, or the database is down."}},
)
async def api_events(
    request: Request, state: State, run: Followed = None
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: ``run`` (a RunSummary) whenever a run in progress changes or a
    new run appears; ``unavailable`` while the database cannot be read."""
    async for event in state.live.events(request.is_disconnected, run):
        yield event
