"""Connections and channels, opened the one way the rest of the adapter relies on."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from pamqp.common import FieldTable

from adapters.redaction import redact_text
from adapters.tls import amqp_ssl_context

log = structlog.get_logger(__name__)


class BrokerUnavailable(ConnectionError):
    """The first connection to RabbitMQ failed: wrong credentials, a vhost that does not
    exist or is not the user's, no broker at that address, or TLS refused. Says which, with
    the URL's password masked. `unreachable`: nothing answered (refused, reset, timed out),
    which a start-up may wait out (adapters/startup.py); the rest will not mend by waiting
    (a robust connection reconnects by itself only once it has been connected)."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


async def connect(url: str, *, name: str | None = None) -> AbstractRobustConnection:
    """A connection that reconnects by itself and then restores its channels, declarations
    and consumers. `name` shows up in the broker's connection list. An `amqps` URL connects
    with TLS (adapters/tls.py). Raises `BrokerUnavailable` at once if it cannot connect."""
    client_properties: FieldTable | None = {"connection_name": name} if name else None
    try:
        return await aio_pika.connect_robust(
            url, client_properties=client_properties, ssl_context=amqp_ssl_context(url)
        )
    except (aiormq.exceptions.AMQPError, OSError) as exc:
        reason = _why(url, exc)
        log.error("amqp_connect_failed", url=redact_text(url), reason=reason)
        raise BrokerUnavailable(
            f"cannot connect to RabbitMQ at {redact_text(url)}: {reason}",
            unreachable=_unreachable(exc),
        ) from None


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
