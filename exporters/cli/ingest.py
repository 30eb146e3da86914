"""``flowtel ingest --db URL``: the OTLP/HTTP receiver that writes history behind a collector.

Workers send spans to the OpenTelemetry Collector; its ``otlphttp`` exporter sends the workflow
spans here (``POST /v1/traces``), and each request is answered once its rows are committed (see
:mod:`exporters.ingest`). Listens on ``127.0.0.1:4318`` unless ``--listen`` says otherwise, and
refuses a non-loopback address without ``--token`` (or ``FLOWTEL_INGEST_TOKEN``). The schema is
checked at start: tables flowtel cannot write to end with exit status 3; an unreachable
database does not stop the start (requests are answered 503 until it is back). SIGTERM and
SIGINT stop it after the requests in flight, flushing what is queued. See docs/ingest.md.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import click
from sqlalchemy.exc import OperationalError

from exporters.cli._common import BadDatabaseURL, DatabaseUnavailable, db_option
from exporters.db.check import SchemaMismatchError, prepare_schema
from exporters.db.engine import DatabaseURLError, display_url, make_engine, resolve_database_url
from exporters.ingest.server import DEFAULT_LISTEN, IngestServer, InsecureListenError
from exporters.ingest.sink import IngestSink

__all__ = ["ingest"]


@click.command()
@db_option
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Address to serve OTLP/HTTP on (anything but loopback needs --token).",
)
@click.option(
    "--token",
    envvar="FLOWTEL_INGEST_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Bearer token every request must carry (default: $FLOWTEL_INGEST_TOKEN).",
)
@click.option(
    "--max-body",
    "max_body_mib",
    type=click.FloatRange(min=0.001),
    default=8.0,
    show_default=True,
    help="Largest request body, in MiB (after gzip inflation); larger ones get 413.",
)
@click.option(
    "--commit-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds a request waits for its rows to commit before it is answered 503.",
)
def ingest(
    db: str | None, listen: str, token: str | None, max_body_mib: float, commit_timeout: float
) -> None:
    """Receive workflow spans over OTLP/HTTP and write them as history rows."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        url = resolve_database_url(db)
        engine = make_engine(url)
    except DatabaseURLError as exc:
        raise BadDatabaseURL(str(exc)) from None
    try:
        prepare_schema(engine)
    except SchemaMismatchError as exc:
        raise DatabaseUnavailable(str(exc)) from None
    except OperationalError:
        click.echo(
            f"flowtel ingest: {display_url(url)} is unreachable for now; "
            "requests get 503 until it is back",
            err=True,
        )
    finally:
        engine.dispose()
    sink = IngestSink(url, commit_timeout=commit_timeout)
    try:
        server = IngestServer(sink, listen, token=token, max_body_bytes=int(max_body_mib * 2**20))
    except (InsecureListenError, ValueError) as exc:
        sink.close()
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        sink.close()
        raise click.ClickException(f"cannot listen on {listen}: {exc}") from None

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, name="flowtel-ingest-stop").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"flowtel ingest: serving {server.url}/v1/traces into {display_url(url)}", err=True)
    sys.stderr.flush()
    server.serve_forever()
    ok = sink.close()
    totals = sink.snapshot()
    totals.pop("processors", None)
    click.echo(
        f"flowtel ingest: stopped ({'flushed' if ok else 'some rows spooled'}); "
        + ", ".join(f"{k} {v}" for k, v in totals.items()),
        err=True,
    )
