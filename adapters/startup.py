"""Start-up that rides through a restart of PostgreSQL or RabbitMQ.

A process started while its database or broker is down (restarting, failing over, not yet up
beside it in a fresh deployment), or losing its connection before it is all set up, waits for
it, `SAGA_STARTUP_PATIENCE` seconds at most, logging `startup_waiting` at each try; past that
it stops, saying why. What waiting cannot mend stops it at once: wrong credentials, a
database or vhost that does not exist, a schema that is not migrated.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiormq
import structlog
from sqlalchemy.exc import DBAPIError

from adapters.rabbitmq.connection import BrokerUnavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")

FIRST_DELAY = 0.2
MAX_DELAY = 5.0


async def patiently(
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    patience: float,
    down: Callable[[], bool] | None = None,
) -> T:
    """`call()`, tried again while `what` cannot be reached, for `patience` seconds at most.
    `down`: whether the connection a step uses is down now (its failure, whatever it says,
    is then the outage's: aio-pika words it several ways while it reconnects)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = FIRST_DELAY
    while True:
        try:
            return await call()
        except Exception as exc:
            outage = unreachable(exc) or (down is not None and down())
            if not outage or loop.time() + delay > deadline:
                raise
            log.warning("startup_waiting", waiting_for=what, error=str(exc)[:200], delay=delay)
        await asyncio.sleep(delay)  # backoff between tries of a server that is down
        delay = min(delay * 2, MAX_DELAY)


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the server is not answering (yet), as opposed to refusing us."""
    if isinstance(exc, BrokerUnavailable):
        return exc.unreachable
    if isinstance(exc, aiormq.exceptions.ChannelInvalidStateError):
        return True  # a channel of a connection that is down, to come back by itself
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "sqlstate", None)
        if code is None:
            # A failed connection attempt carries no SQLSTATE, only the text: the server's own
            # FATAL refusal (a role, database or password that will not mend by waiting)
            # unless it is starting up, shutting down, recovering or full; otherwise the
            # connection itself failed (refused, reset, no route).
            text = str(exc.orig)
            if "FATAL:" in text:
                return "the database system is" in text or "too many clients" in text
            return True
        # 08: connection exceptions; 57P01-03: shutting down, crashed, starting up.
        return code.startswith("08") or code in ("57P01", "57P02", "57P03")
    return isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)
