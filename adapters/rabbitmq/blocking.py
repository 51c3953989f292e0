"""Whether RabbitMQ blocks a connection's publishing, and why: what `/readyz` and the
`saga_amqp_blocked` metrics of `saga run` report.

When a node raises a resource alarm (memory above `vm_memory_high_watermark`, free disk below
`disk_free_limit`) it stops reading from every connection that publishes, and tells each, as it
blocks it, with `connection.blocked` naming the alarm ("low on memory", "low on disk"); then
`connection.unblocked` when the alarm clears. A connection that only consumes is not blocked,
and one that has not published since the alarm began is not told yet: the orchestrator learns
of an alarm with its first publish after it (which then waits), exactly when it cannot
dispatch.

aiormq receives both frames, logs them and pauses its writer, but neither it nor aio-pika
offers a callback (aio-pika issue 506). So `watch_notifications` wraps aiormq's two frame
handlers once per process, keeping each connection's block and telling the `BlockedWatch`es
that follow it. It checks that the handlers are there: an aiormq release that renamed them
would leave the watch blind, which is logged at start (`amqp_blocked_watch_unavailable`), and
tests/integration/test_readiness_blocked.py fails.

A robust connection reconnects as a new aiormq connection, not blocked until told again:
`BlockedWatch` follows it there.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import aiormq
import aiormq.connection
import structlog
from aio_pika.abc import AbstractRobustConnection

log = structlog.get_logger(__name__)

_HANDLERS = (
    "_Connection__handle_connection_blocked",
    "_Connection__handle_connection_unblocked",
)

Listener = Callable[[str | None], None]
"""Told the alarm when its connection is blocked, None when it is unblocked."""

# Per aiormq connection (gone with it): the alarm it is blocked by, and who follows it.
_blocked: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_listeners: weakref.WeakKeyDictionary[Any, list[Listener]] = weakref.WeakKeyDictionary()
_WRAPPED = "_saga_watches_blocks"  # marks the wrappers: wrapped once, however many watches


def watch_notifications() -> bool:
    """Wrap aiormq's handlers of `connection.blocked` and `connection.unblocked` (once per
    process); False, logged, when this aiormq has no such handlers."""
    cls = aiormq.connection.Connection
    blocked, unblocked = (getattr(cls, name, None) for name in _HANDLERS)
    if getattr(blocked, _WRAPPED, False):
        return True
    if blocked is None or unblocked is None:
        log.error(
            "amqp_blocked_watch_unavailable",
            aiormq=getattr(aiormq, "__version__", "?"),
            reason="aiormq's connection.blocked handlers are not where this release expects "
            "them: /readyz and saga_amqp_blocked cannot see a blocked connection",
        )
        return False

    async def on_blocked(self: Any, frame: Any) -> None:
        _tell(self, str(getattr(frame, "reason", "") or "no reason given"))
        await blocked(self, frame)

    async def on_unblocked(self: Any, frame: Any) -> None:
        _tell(self, None)
        await unblocked(self, frame)

    for name, wrapper in zip(_HANDLERS, (on_blocked, on_unblocked), strict=True):
        setattr(wrapper, _WRAPPED, True)
        setattr(cls, name, wrapper)
    return True


def _tell(connection: Any, alarm: str | None) -> None:
    if alarm is None:
        _blocked.pop(connection, None)
    else:
        _blocked[connection] = alarm
    for listener in list(_listeners.get(connection, ())):
        listener(alarm)


class BlockedWatch:
    """Whether the broker blocks `connection` now (`alarm`), and for how long it has, in all
    (`blocked_seconds`), across reconnections."""

    def __init__(
        self, connection: AbstractRobustConnection, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._alarm: str | None = None
        self._since = 0.0
        self._total = 0.0
        self._followed: Any = None
        self.available = watch_notifications()
        self._connection = weakref.ref(connection)
        connection.reconnect_callbacks.add(self._reconnected)
        self._follow()

    @property
    def alarm(self) -> str | None:
        """What the broker blocks the connection for ("low on memory"), or None."""
        return self._alarm

    @property
    def blocked(self) -> bool:
        return self._alarm is not None

    def blocked_seconds(self) -> float:
        """Seconds blocked since the watch began, the block going on now included."""
        now = self._clock() - self._since if self.blocked else 0.0
        return self._total + now

    def close(self) -> None:
        self._unfollow()
        connection = self._connection()
        if connection is not None:
            connection.reconnect_callbacks.discard(self._reconnected)

    def _reconnected(self, *_: object) -> None:
        self._follow()

    def _follow(self) -> None:
        """Follow the connection's current aiormq connection, whose block (if it was told
        one already) is this watch's now; a block of the connection before ended with it."""
        self._unfollow()
        connection = self._connection()
        transport = None if connection is None else connection.transport
        if transport is None:
            self._changed(None)
            return
        self._followed = transport.connection
        _listeners.setdefault(self._followed, []).append(self._changed)
        self._changed(_blocked.get(self._followed))

    def _unfollow(self) -> None:
        if self._followed is not None:
            listeners = _listeners.get(self._followed, [])
            if self._changed in listeners:
                listeners.remove(self._changed)
            self._followed = None

    def _changed(self, alarm: str | None) -> None:
        if alarm == self._alarm:
            return
        now = self._clock()
        if self._alarm is not None:
            seconds = now - self._since
            self._total += seconds
            log.info("amqp_unblocked", alarm=self._alarm, seconds=round(seconds, 3))
        if alarm is not None:
            self._since = now
            log.warning("amqp_blocked", alarm=alarm)
        self._alarm = alarm
