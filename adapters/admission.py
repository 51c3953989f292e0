"""Admission control: starts wait in the broker's queue while too many sagas are active.

Offered more than it can carry, an engine without it runs every start at once: the command
queues grow past the steps' timeouts, commands reach participants already expired, every
timeout schedules a retry or another compensation attempt, and those time out too — a
first chaos run ended with 468 of 5,000 sagas parked (docs/guarantees.md, known gap 2).

With `SAGA_MAX_ACTIVE` set, `saga run` begins a start only while fewer sagas than that are
running or compensating (all replicas together: the count is the database's). Otherwise
the start's message waits unacked in the starts consumer, which stops the broker from
delivering more (prefetch), so the backlog stays in the durable `saga.requests` queue, in
order, and the sagas already running keep their pace. Cancels have a queue of their own
(`saga.cancels`) and are never held: a cancel for a start still waiting is remembered and
the start, once admitted, ends cancelled without running a step.

The count is read at most every `interval` seconds; starts admitted since the last reading
count too, so one replica does not overshoot, and a batch of starts begins only as many as
there is room for (the rest of it waits). Replicas admitting at the same moment may together
overshoot by what each saw as room.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

INTERVAL = 0.5


class Admission:
    def __init__(
        self,
        count_active: Callable[[], Awaitable[int]],
        limit: int | None,
        *,
        interval: float = INTERVAL,
        stopping: asyncio.Event | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None (no limit), got {limit}")
        self._count_active = count_active
        self.limit = limit
        self.interval = interval
        self._stopping = stopping or asyncio.Event()
        self._active: int | None = None
        self._read_at = 0.0
        self.held = 0  # starts waiting for room right now (a gauge)

    async def admit(self, wanted: int) -> int:
        """How many of `wanted` starts may begin now (at least one), waiting while the active
        sagas (as last read, plus those admitted since) reach the limit. All of them without
        a limit, and all of them once the process is stopping: its consumer must finish."""
        if self.limit is None or wanted < 1:
            return wanted
        waited_since: float | None = None
        self.held += wanted
        try:
            while True:
                active = await self._reading()
                if self._stopping.is_set():
                    granted = wanted
                    break
                if active < self.limit:
                    granted = min(wanted, self.limit - active)
                    break
                if waited_since is None:
                    waited_since = time.monotonic()
                    log.info("admission_holding_starts", active=active, limit=self.limit)
                await asyncio.sleep(self.interval)
        finally:
            self.held -= wanted
        self._active = (self._active or 0) + granted
        if waited_since is not None:
            log.info(
                "admission_admitted_starts",
                starts=granted,
                waited_seconds=round(time.monotonic() - waited_since, 3),
            )
        return granted

    async def _reading(self) -> int:
        now = time.monotonic()
        if self._active is None or now - self._read_at >= self.interval:
            self._active = await self._count_active()
            self._read_at = now
        return self._active
