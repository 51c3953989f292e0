"""Connections and channels, opened the one way the rest of the adapter relies on."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from pamqp.common import FieldTable


async def connect(url: str, *, name: str | None = None) -> AbstractRobustConnection:
    """A connection that reconnects by itself and then restores its channels, declarations
    and consumers. `name` shows up in the broker's connection list."""
    client_properties: FieldTable | None = {"connection_name": name} if name else None
    return await aio_pika.connect_robust(url, client_properties=client_properties)


async def open_channel(connection: AbstractRobustConnection) -> AbstractRobustChannel:
    """A channel whose publishes wait for the broker's confirm.

    `on_return_raises=True` matters as much as the confirms: without it aio-pika resolves a
    mandatory publish that the broker could not route (Basic.Return, then Basic.Ack) as a
    success, handing back the returned message instead of raising, so a command for a service
    with no queue would vanish. With it, such a publish raises `aio_pika.exceptions.PublishError`.
    """
    return await connection.channel(publisher_confirms=True, on_return_raises=True)
