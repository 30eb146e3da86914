"""``flowtel serve``'s web side: the history as a JSON API, pages and a live stream.

:func:`~exporters.serve.app.create_app` builds the ASGI application (FastAPI, in the
``flowtel[web]`` extra) on a read-only engine (:mod:`.engine`) around one shared
:class:`~exporters.serve.state.ServeState`, and includes one router per concern from
:mod:`.routes` (:mod:`~.routes.api`, :mod:`~.routes.events`, :mod:`~.routes.pages`);
:mod:`.params` checks the query parameters, :mod:`.responses` draws pages and errors,
:mod:`.live` shares the live stream's snapshots; :mod:`.queries` adds cursor pages, the live
snapshot and the old table's shape to :mod:`exporters.query`; :mod:`.views` computes what the
templates draw; :mod:`.security` checks the token and sets the headers. May import
:mod:`exporters.query`, :mod:`exporters.ops`, :mod:`exporters.db`, :mod:`exporters.access`,
:mod:`exporters.errors` and :mod:`instrumentation`; only :mod:`exporters.cli` imports it.
"""
