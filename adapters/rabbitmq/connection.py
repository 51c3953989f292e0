"""Connections and channels, opened the one way the rest of the adapter relies on."""

from __future__ import annotations

import asyncio
import random
import ssl
from urllib.parse import unquote, urlsplit

import aiormq
import structlog
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from pamqp.common import FieldTable

from adapters.amqp_urls import node_urls
from adapters.rabbitmq.nodes import NodesConnection
from adapters.redaction import redact_text
from adapters.tls import amqp_ssl_context

log = structlog.get_logger(__name__)


class BrokerUnavailable(ConnectionError):
    """The first connection to RabbitMQ failed: wrong credentials, a vhost that does not
    exist or is not the user's, no broker at that address, or TLS refused. Says which, with
    the URL's password masked (for each node, when SAGA_AMQP_URL lists several).
    `unreachable`: no node answered (refused, reset, timed out), which a start-up may wait
    out (adapters/startup.py); the rest will not mend by waiting (a robust connection
    reconnects by itself only once it has been connected)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


async def connect(url: str, *, name: str | None = None) -> AbstractRobustConnection:
    """A connection that reconnects by itself and then restores its channels, declarations
    and consumers. `name` shows up in the broker's connection list. An `amqps` URL connects
    with TLS (adapters/tls.py). `url` may list the nodes of a cluster, comma-separated
    (adapters/amqp_urls.py): the first connection goes to the first node that answers,
    starting at a random one, and a lost node is left for the next (adapters/rabbitmq/nodes.py).
    Raises `BrokerUnavailable` at once if no node can be connected to."""
    client_properties: FieldTable | None = {"connection_name": name} if name else None
    urls = node_urls(url)
    start = random.randrange(len(urls))  # spread the processes over the nodes
    ring = urls[start:] + urls[:start]
    reasons: list[str] = []
    unreachable: list[bool] = []
    for i, first in enumerate(ring):
        connection: NodesConnection | None = None
        try:
            connection = NodesConnection(
                ring[i:] + ring[:i],
                client_properties=client_properties,
                ssl_context=amqp_ssl_context(first),  # a missing CA file is an OSError
            )
            await connection.connect()
        except (aiormq.exceptions.AMQPError, OSError) as exc:
            reason = _why(first, exc)
            # One node of several not answering is not yet a failure: the next may.
            report = log.error if len(ring) == 1 else log.warning
            report("amqp_connect_failed", url=redact_text(first), reason=reason)
            reasons.append(f"{redact_text(first)}: {reason}" if len(ring) > 1 else reason)
            unreachable.append(_unreachable(exc))
            if connection is not None:
                await connection.close()
            continue
        return connection
    # Worth waiting for only if no node answered: one that refused us will refuse again.
    if len(ring) == 1:
        raise BrokerUnavailable(
            f"cannot connect to RabbitMQ at {redact_text(url)}: {reasons[0]}",
            unreachable=unreachable[0],
        )
    raise BrokerUnavailable(
        f"cannot connect to any of the {len(ring)} RabbitMQ nodes: " + "; ".join(reasons),
        unreachable=all(unreachable),
    )


def _unreachable(exc: BaseException) -> bool:
    """Nothing answered, as opposed to a broker (or its TLS) refusing us."""
    refused = isinstance(exc, (aiormq.exceptions.ProbableAuthenticationError, ssl.SSLError)) or (
        isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc)
    )
    return not refused and isinstance(exc, OSError)


def _why(url: str, exc: BaseException) -> str:
    """What an operator needs to hear of a failed connection attempt."""
    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return f"access refused for user {user!r}: wrong user name or password"
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in str(exc):
        # RabbitMQ answers Connection.Open on a vhost the user may not use with a close.
        return (
            f"access refused to vhost {vhost!r}: it does not exist or user {user!r} has no "
            "permissions on it"
        )
    return redact_text(f"{type(exc).__name__}: {exc}")


async def open_channel(connection: AbstractRobustConnection) -> AbstractRobustChannel:
    """A channel whose publishes wait for the broker's confirm.

    `on_return_raises=True` matters as much as the confirms: without it aio-pika resolves a
    mandatory publish that the broker could not route (Basic.Return, then Basic.Ack) as a
    success, handing back the returned message instead of raising, so a command for a service
    with no queue would vanish. With it, such a publish raises `aio_pika.exceptions.PublishError`.
    """
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    channel.close_callbacks.add(_closed)
    return channel


def _closed(_channel: object, exc: BaseException | None = None) -> None:
    """Say why the broker closed a channel (a consumer timeout, a refused declaration, ...):
    the robust channel reopens and consumes again, but the unacked messages it had go back
    to their queues, and an operator should know why."""
    if exc is None or isinstance(exc, asyncio.CancelledError) or exc.args == (None, None):
        return  # closed by us (aiormq's ChannelClosed(None, None))
    log.warning("amqp_channel_closed", reason=redact_text(f"{type(exc).__name__}: {exc}"))
