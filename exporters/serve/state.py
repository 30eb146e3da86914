"""The one object every route of ``flowtel serve`` shares: :class:`ServeState`.

:func:`~exporters.serve.app.create_app` builds it (the read-only engine, the
:class:`~exporters.query.store.HistoryStore` on it, the database's label, the templates and the
live feed) and keeps it on ``app.state.flowtel``; a route asks for it with the :data:`State`
dependency, so no route module holds state of its own and a new page is one new router that
reads what it needs from here.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine

from exporters.query.store import HistoryStore
from exporters.serve.live import LiveFeed

__all__ = ["ServeState", "State", "serve_state"]


@dataclasses.dataclass
class ServeState:
    """What the routes share: where the history is and how the pages are drawn."""

    engine: Engine
    store: HistoryStore
    database: str
    """How pages and ``/api/health`` name the database (password masked)."""
    templates: Jinja2Templates
    live: LiveFeed


def serve_state(request: Request) -> ServeState:
    """The application's :class:`ServeState` (a FastAPI dependency)."""
    state: ServeState = request.app.state.flowtel
    return state


State = Annotated[ServeState, Depends(serve_state)]
"""A route parameter of this type receives the application's :class:`ServeState`."""
