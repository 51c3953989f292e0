"""`saga relay`: the starter's relay as a process of its own, for a service that writes the
outbox table itself (any language: the DDL and row format are in docs/starter.md) or that
would rather not run the relay inside its own process."""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from adapters.cli import support as cs

if TYPE_CHECKING:
    from adapters.starter.table import OutboxTable


def relay(
    database: Annotated[
        str,
        typer.Option(
            "--database",
            envvar="SAGA_RELAY_DATABASE_URL",
            help="The service's database holding the outbox table, e.g. "
            "postgresql://app@127.0.0.1:5432/shop (not the saga database).",
        ),
    ],
    *,
    table: Annotated[
        str, typer.Option("--table", envvar="SAGA_RELAY_TABLE", help="The outbox table's name.")
    ] = "saga_starter_outbox",
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema", envvar="SAGA_RELAY_SCHEMA", help="Its schema; the search_path's if unset."
        ),
    ] = None,
    amqp_url: Annotated[
        str | None,
        typer.Option(
            "--amqp-url",
            help="RabbitMQ URL (a cluster's nodes' URLs, comma-separated); SAGA_AMQP_URL "
            "(and SAGA_AMQP_PREFIX) by default.",
        ),
    ] = None,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=1000, help="Most rows per publish.")
    ] = 100,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            envvar="SAGA_RELAY_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve the relay's Prometheus metrics on this port (at any path).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option("--metrics-host", help="The address --metrics-port binds.")
    ] = "127.0.0.1",
) -> None:
    """Publish the starts and cancels services write into their outbox table to the `sagas`
    exchange, with publisher confirms, deleting each row once the broker holds it; wait on
    LISTEN/NOTIFY when idle, back off while the broker or the database is down. Run as many
    as you like on one table. Stops cleanly on SIGTERM or SIGINT."""
    from adapters.starter.relay import RelaySetupError, check_table, conninfo
    from adapters.starter.table import OutboxTable

    config = cs.settings(long_running=True)
    try:
        outbox = OutboxTable(table, schema)
        cs.run(check_table(conninfo(database), outbox))
        cs.run(
            _serve(
                database,
                outbox,
                amqp_url=amqp_url or config.amqp_url,
                prefix=config.amqp_prefix,
                batch=batch,
                metrics_port=metrics_port,
                metrics_host=metrics_host,
            )
        )
    except (RelaySetupError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None


async def _serve(
    database: str,
    outbox: OutboxTable,
    *,
    amqp_url: str,
    prefix: str,
    batch: int,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    import structlog
    from prometheus_client import CollectorRegistry, start_http_server

    from adapters.starter.relay import RelaySetupError, relaying

    registry = CollectorRegistry()
    server = None
    if metrics_port is not None:
        try:
            server, _thread = start_http_server(metrics_port, metrics_host, registry=registry)
        except OSError as exc:
            raise RelaySetupError(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}"
            ) from None
        structlog.get_logger(__name__).info(
            "starter_metrics_serving", host=metrics_host, port=server.server_port
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with relaying(
            database, amqp_url=amqp_url, prefix=prefix, table=outbox, batch=batch, registry=registry
        ):
            await stop.wait()
    finally:
        if server is not None:
            server.shutdown()
