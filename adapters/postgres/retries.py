"""`with_db_retries`: a database call retried while retrying can help, on a lost race with
another transaction or while the database is unreachable (restarting, failing over)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from sqlalchemy.exc import DBAPIError

from orchestrator.errors import ConcurrentUpdate

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def with_db_retries(call: Callable[[], Awaitable[T]], *, patience: float = 600.0) -> T:
    """Retry a transition on a lost race or while the database is unreachable.

    The message stays unacked meanwhile: requeueing it would count against the queue's
    delivery limit and a database outage would dead-letter good messages.
    """
    delay, waited = 0.05, 0.0
    conflicts = 0
    while True:
        try:
            return await call()
        except ConcurrentUpdate:
            conflicts += 1
            if conflicts > 20:
                raise
        except DBAPIError as exc:
            if (not exc.connection_invalidated and not _is_transient(exc)) or waited > patience:
                raise
            log.warning(
                "database_unavailable_retrying", error=str(exc.orig or exc)[:200], delay=delay
            )
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)


def _is_transient(exc: DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or ""
    # 40001 serialization, 40P01 deadlock, 08* connection, 57P* shutdown / admin terminate.
    return code in ("40001", "40P01") or code.startswith(("08", "57P"))
