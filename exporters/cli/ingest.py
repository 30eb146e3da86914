"""``flowtel ingest --db URL``: the OTLP receiver that writes history behind a collector.

Workers send spans to the OpenTelemetry Collector; its ``otlphttp`` exporter sends the workflow
spans here (``POST /v1/traces``), or its ``loadbalancing`` exporter over OTLP/gRPC
(``--listen-grpc``, ``TraceService/Export``) to several replicas, and each request is answered
once its rows are committed (see :mod:`exporters.ingest`). Listens on ``127.0.0.1:4318`` unless
``--listen`` says otherwise, and refuses a non-loopback address without ``--token`` (or
``FLOWTEL_INGEST_TOKEN``), for gRPC too. The schema is
checked at start: tables flowtel cannot write to end with exit status 3; an unreachable
database does not stop the start (requests are answered 503 until it is back). SIGTERM and
SIGINT stop it after the requests in flight, flushing what is queued. ``--retention`` (or
``FLOWTEL_RETENTION``) prunes old runs by a policy in the background. See docs/ingest.md.
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
from exporters.ingest.grpc import GrpcIngestServer
from exporters.ingest.server import DEFAULT_LISTEN, IngestServer, InsecureListenError
from exporters.ingest.sink import IngestSink
from exporters.ops.policy import RETENTION_ENV, RetentionPolicy
from exporters.ops.schedule import RetentionRunner

__all__ = ["ingest"]


def _retention(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> RetentionPolicy | None:
    if value is None or value.strip().lower() in ("", "off"):
        return None
    try:
        return RetentionPolicy.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


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
    "--listen-grpc",
    default=None,
    metavar="HOST:PORT",
    help="Also serve OTLP/gRPC (TraceService/Export) there, e.g. 127.0.0.1:4317, for the "
    "collector's loadbalancing exporter (anything but loopback needs --token).",
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
@click.option(
    "--retention",
    envvar=RETENTION_ENV,
    default=None,
    metavar="STATUS=AGE,...",
    callback=_retention,
    help="Delete old runs by this policy, at most once an hour in small batches, e.g. "
    "completed=30d,failed=180d,cancelled=90d (default: $FLOWTEL_RETENTION, else off).",
)
def ingest(
    db: str | None,
    listen: str,
    listen_grpc: str | None,
    token: str | None,
    max_body_mib: float,
    commit_timeout: float,
    retention: RetentionPolicy | None,
) -> None:
    """Receive workflow spans over OTLP/HTTP (and OTLP/gRPC) and write them as history rows."""
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
    max_body = int(max_body_mib * 2**20)
    grpc_server: GrpcIngestServer | None = None
    address = listen
    try:
        server = IngestServer(sink, listen, token=token, max_body_bytes=max_body)
        if listen_grpc is not None:
            address = listen_grpc
            try:
                grpc_server = GrpcIngestServer(server, listen_grpc).start()
            except BaseException:
                server.shutdown()
                raise
    except (InsecureListenError, ValueError) as exc:
        sink.close()
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        sink.close()
        raise click.ClickException(f"cannot listen on {address}: {exc}") from None

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, name="flowtel-ingest-stop").start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    served = f"{server.url}/v1/traces"
    if grpc_server is not None:
        served += f" and OTLP/gRPC on {grpc_server.target}"
    click.echo(f"flowtel ingest: serving {served} into {display_url(url)}", err=True)
    sys.stderr.flush()
    runner = None
    if retention is not None:
        runner = RetentionRunner(make_engine(url), retention).start()
    try:
        server.serve_forever()
    finally:
        if runner is not None:
            runner.stop()
            runner.engine.dispose()
    if grpc_server is not None:  # the requests in flight finish (or time out) first
        grpc_server.shutdown(grace=commit_timeout + 1)
    ok = sink.close()
    totals = sink.snapshot()
    totals.pop("processors", None)
    if grpc_server is not None:
        totals.update({f"grpc_{k}": v for k, v in grpc_server.snapshot().items()})
    click.echo(
        f"flowtel ingest: stopped ({'flushed' if ok else 'some rows spooled'}); "
        + ", ".join(f"{k} {v}" for k, v in totals.items()),
        err=True,
    )
