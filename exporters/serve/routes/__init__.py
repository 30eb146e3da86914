"""``flowtel serve``'s routes, one :class:`fastapi.APIRouter` per concern.

:mod:`.api` is the JSON API, :mod:`.events` the live stream (Server-Sent Events), :mod:`.pages`
the HTML pages and the partials they refresh from. Each reads the shared
:class:`~exporters.serve.state.ServeState` through the ``State`` dependency; a new page is a
new module here and one ``include_router`` in :func:`~exporters.serve.app.create_app`.
"""
