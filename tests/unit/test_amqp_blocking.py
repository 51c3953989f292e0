"""BlockedWatch (adapters/rabbitmq/blocking.py) on aiormq connections that are never opened: the
frames RabbitMQ sends go through aiormq's own handlers, as they do on a wire (tested on a real
node in tests/integration/test_readiness_blocked.py). A block names its alarm and ends with
`unblocked` or with the connection (a reconnection starts unblocked); blocked seconds add up
across blocks, the one going on included, and reach the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiormq
from pamqp import commands as spec

from adapters import metrics
from adapters.rabbitmq.blocking import BlockedWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Callbacks:
    """aio-pika's reconnect_callbacks, as far as the watch uses them."""

    callbacks: list[Any] = field(default_factory=list)

    def add(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def discard(self, callback: Any) -> None:
        self.callbacks.remove(callback)


@dataclass
class Transport:
    connection: aiormq.Connection


class Robust:
    """A robust connection: its current aiormq connection, replaced on reconnection."""

    def __init__(self) -> None:
        self.transport: Transport | None = Transport(_aiormq())
        self.reconnect_callbacks = Callbacks()

    def reconnect(self) -> None:
        self.transport = Transport(_aiormq())
        for callback in self.reconnect_callbacks.callbacks:
            callback(self)

    async def blocked(self, reason: str) -> None:
        assert self.transport is not None
        frame = spec.Connection.Blocked(reason=reason)
        await self.transport.connection._Connection__handle_connection_blocked(frame)  # type: ignore[attr-defined]

    async def unblocked(self) -> None:
        assert self.transport is not None
        frame = spec.Connection.Unblocked()
        await self.transport.connection._Connection__handle_connection_unblocked(frame)  # type: ignore[attr-defined]


def _aiormq() -> aiormq.Connection:
    return aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")  # never opened


async def test_a_block_names_its_alarm_and_its_seconds_add_up() -> None:
    clock, connection = Clock(), Robust()
    watch = BlockedWatch(connection, clock=clock)  # type: ignore[arg-type]
    assert watch.available
    assert (watch.alarm, watch.blocked_seconds()) == (None, 0.0)

    await connection.blocked("low on memory")
    assert watch.alarm == "low on memory" and watch.blocked
    clock.now += 2.5
    assert watch.blocked_seconds() == 2.5  # the block going on counts
    await connection.unblocked()
    assert watch.alarm is None
    clock.now += 10
    assert watch.blocked_seconds() == 2.5

    await connection.blocked("low on disk")
    clock.now += 1
    assert (watch.alarm, watch.blocked_seconds()) == ("low on disk", 3.5)
    await connection.unblocked()
    assert watch.blocked_seconds() == 3.5


async def test_a_reconnection_ends_the_block_and_the_new_connection_is_followed() -> None:
    clock, connection = Clock(), Robust()
    watch = BlockedWatch(connection, clock=clock)  # type: ignore[arg-type]
    other = BlockedWatch(Robust(), clock=clock)  # type: ignore[arg-type]
    await connection.blocked("low on memory")
    assert other.alarm is None  # each watch follows its own connection
    clock.now += 4
    old = connection.transport
    connection.reconnect()
    assert watch.alarm is None and watch.blocked_seconds() == 4
    assert old is not None
    await old.connection._Connection__handle_connection_blocked(  # type: ignore[attr-defined]
        spec.Connection.Blocked(reason="low on disk")
    )
    assert watch.alarm is None  # the old connection is no longer followed
    await connection.blocked("low on disk")
    assert watch.alarm == "low on disk"
    watch.close()
    assert connection.reconnect_callbacks.callbacks == []


async def test_the_metrics_report_the_latest_watch() -> None:
    clock, connection = Clock(), Robust()
    watch = BlockedWatch(connection, clock=clock)  # type: ignore[arg-type]
    metrics.AMQP_BLOCKED.watch(watch)
    await connection.blocked("low on memory")
    clock.now += 3
    assert metrics.value("saga_amqp_blocked") == 1
    assert metrics.value("saga_amqp_blocked_seconds_total") == 3
    await connection.unblocked()
    assert metrics.value("saga_amqp_blocked") == 0
    assert metrics.value("saga_amqp_blocked_seconds_total") == 3
