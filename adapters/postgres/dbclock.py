"""The database's clock, kept in this process: the time `saga run`, the CLI's operator actions
and participants with a database of their own decide by.

Deadlines (`due_at`, `expires_at`, `next_due_at`) are written by one process and acted on by
another. Each reading its own wall clock, a host running fast would time out the steps other
replicas dispatched as soon as it swept them (a chaos run with one orchestrator 120 s fast
timed out half its steps at once, and ran them twice), and one running slow would dispatch
commands its participants refuse as expired. So the time is the database's, one clock for
every process that shares it:

- `sync` reads PostgreSQL's `clock_timestamp()` a few times on one connection (the pool's
  wait is not timed) and keeps the reading with the shortest round trip, taken to be the
  database's time at that round trip's midpoint on this process's monotonic clock;
- reading the clock (`clock()`) is that database time plus the monotonic time since: no
  query per transition, and neither a wrong wall clock nor a jump of it (an NTP step, an
  operator's `date`) moves it. Its error is at most half that round trip, plus the drift of
  the monotonic clock since the last sync (parts per million; `keep` syncs every
  SYNC_INTERVAL). The monotonic clock stops while the machine is suspended, so after a
  resume the clock runs behind until the next sync: timers fire late, never early.

Each sync also measures this host's skew, its wall clock minus the database's: beyond
`max_skew` (SAGA_CLOCK_SKEW_MAX) it logs the error `clock_skew` at every sync until the skew is
back within (`clock_skew_cleared`), and `skewed()` says by how much, which fails `saga run`'s
readiness. The engine is not misled by the skew; the host is wrong all the same, and so is
everything else on it that reads the wall clock (log timestamps, certificates' validity).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)

# Seconds between two syncs of `keep`: the monotonic clock drifts microseconds in that time.
SYNC_INTERVAL = 30.0
# Readings per sync; the one with the shortest round trip is kept.
SAMPLES = 3

DatabaseNow = Callable[[], Awaitable[datetime]]
"""Reads the database's clock once."""
Session = Callable[[], AbstractAsyncContextManager[DatabaseNow]]
"""Opens what `DatabaseNow` reads on (a connection), for the readings of one sync."""


def database_session(engine: AsyncEngine) -> Session:
    """Readings of `clock_timestamp()` (the time now, not the transaction's start) on one
    pooled connection of `engine`."""

    @asynccontextmanager
    async def session() -> AsyncIterator[DatabaseNow]:
        async with engine.connect() as conn:

            async def now() -> datetime:
                value = await conn.scalar(sa.text("SELECT clock_timestamp()"))
                if not isinstance(value, datetime):
                    raise TypeError(f"clock_timestamp() returned {value!r}")
                return value.astimezone(UTC)

            yield now

    return session


@dataclass(frozen=True)
class Sync:
    """One sync's kept reading."""

    database: datetime  # the database's clock, as read
    at: float  # this process's monotonic time at the midpoint of the round trip
    round_trip: float  # seconds
    offset: float  # this host's wall clock minus the database's, in seconds


class DatabaseClock:
    """Aware UTC datetimes on the database's clock (a `Clock` for the engine, the participant
    worker, the retention sweep). `sync()` once before the first reading."""

    def __init__(
        self,
        session: Session,
        *,
        max_skew: float,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        samples: int = SAMPLES,
    ) -> None:
        """`max_skew`: the most seconds this host's wall clock may differ from the
        database's before it is reported (logged, `skewed()`). `monotonic` and `wall` are
        this process's clocks, given by tests."""
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        self._session = session
        self.max_skew = max_skew
        self._monotonic = monotonic
        self._wall = wall
        self._samples = samples
        self.last: Sync | None = None

    def __call__(self) -> datetime:
        last = self._synced()
        return last.database + timedelta(seconds=self._monotonic() - last.at)

    @property
    def offset(self) -> float:
        """This host's wall clock minus the database's at the last sync, in seconds (0 before
        the first): positive when the host runs ahead."""
        return 0.0 if self.last is None else self.last.offset

    def skewed(self) -> str | None:
        """How far this host's clock is off the database's when that is beyond `max_skew`,
        else None."""
        if self.last is None or abs(self.last.offset) <= self.max_skew:
            return None
        direction = "ahead of" if self.last.offset > 0 else "behind"
        return (
            f"this host's clock is {abs(self.last.offset):.1f} s {direction} the database's "
            f"(SAGA_CLOCK_SKEW_MAX is {self.max_skew:g} s)"
        )

    async def sync(self) -> Sync:
        """Read the database's clock, keep the best reading, and report the skew. Raises what
        the database raises; the clock then goes on from its last sync."""
        best: Sync | None = None
        async with self._session() as database_now:
            for _ in range(self._samples):
                sent, wall_sent = self._monotonic(), self._wall()
                database = await database_now()
                received, wall_received = self._monotonic(), self._wall()
                wall = wall_sent + (wall_received - wall_sent) / 2
                reading = Sync(
                    database=database,
                    at=(sent + received) / 2,
                    round_trip=received - sent,
                    offset=(wall - database).total_seconds(),
                )
                if best is None or reading.round_trip < best.round_trip:
                    best = reading
        assert best is not None
        self._report(best)
        self.last = best
        return best

    async def keep(self, stop: asyncio.Event, interval: float = SYNC_INTERVAL) -> None:
        """Sync every `interval` seconds until `stop` is set. A failed sync is logged and
        tried again at the next interval; the clock goes on from the last one meanwhile."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                await self.sync()
            except Exception as exc:
                log.warning("clock_sync_failed", error=str(exc)[:300] or type(exc).__name__)

    def _synced(self) -> Sync:
        if self.last is None:
            raise RuntimeError("DatabaseClock read before its first sync(): await sync() first")
        return self.last

    def _report(self, reading: Sync) -> None:
        figures = {
            "offset_seconds": round(reading.offset, 3),
            "max_skew_seconds": self.max_skew,
            "round_trip_seconds": round(reading.round_trip, 4),
            "database_time": reading.database.isoformat(),
        }
        was_skewed = self.last is not None and abs(self.last.offset) > self.max_skew
        if abs(reading.offset) > self.max_skew:
            direction = "ahead of" if reading.offset > 0 else "behind"
            log.error(
                "clock_skew",
                **figures,
                reason=f"this host's wall clock is {abs(reading.offset):.1f} s {direction} "
                "the database's: fix its time synchronisation (NTP). Deadlines and timers "
                "go by the database's clock meanwhile",
            )
        elif was_skewed:
            log.info("clock_skew_cleared", **figures)
        elif self.last is None:
            log.debug("clock_synced", **figures)  # routine: a CLI command would print it
