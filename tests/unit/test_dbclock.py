"""The database clock (adapters/postgres/dbclock.py) on an injected database and injected
process clocks: it reads the database's time plus the monotonic time since, whatever the
host's wall clock says or does; it keeps the reading with the shortest round trip; and it
reports a host clock off the database's by more than its bound (log, `skewed()`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from adapters.postgres.dbclock import DatabaseClock, DatabaseNow

DB_START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Machine:
    """A database server and this process's clocks, all moved by hand. The database's clock
    is `DB_START` plus the seconds elapsed; the host's wall clock is that plus `skew`; the
    monotonic clock starts at an arbitrary 1000."""

    def __init__(self, skew: float = 0.0, round_trips: Sequence[float] = (0.002,)) -> None:
        self.elapsed = 0.0
        self.skew = skew
        self.round_trips = list(round_trips)  # of the readings, in turn (the last repeats)
        self.readings = 0
        self.fail = False

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed

    def wall(self) -> datetime:
        return self.database() + timedelta(seconds=self.skew)

    def database(self) -> datetime:
        return DB_START + timedelta(seconds=self.elapsed)

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds

    @asynccontextmanager
    async def session(self) -> AsyncIterator[DatabaseNow]:
        if self.fail:
            raise ConnectionError("the database is down")

        async def now() -> datetime:
            trip = self.round_trips[min(self.readings, len(self.round_trips) - 1)]
            self.readings += 1
            # The query reaches the server after half the trip, the answer comes back after
            # the other half.
            self.advance(trip / 2)
            read = self.database()
            self.advance(trip / 2)
            return read

        yield now

    def clock(self, max_skew: float = 5.0, samples: int = 3) -> DatabaseClock:
        return DatabaseClock(
            self.session,
            max_skew=max_skew,
            monotonic=self.monotonic,
            wall=self.wall,
            samples=samples,
        )


async def test_it_reads_the_database_time_plus_the_monotonic_time_since() -> None:
    machine = Machine(skew=120.0)
    clock = machine.clock()
    await clock.sync()
    assert clock() == machine.database()
    machine.advance(12.5)
    assert clock() == machine.database()
    assert clock() != machine.wall()


async def test_a_jump_of_the_wall_clock_does_not_move_it() -> None:
    machine = Machine()
    clock = machine.clock()
    await clock.sync()
    machine.skew = -3600.0  # an operator sets the host's date an hour back
    machine.advance(1.0)
    assert clock() == machine.database()


async def test_it_keeps_the_reading_with_the_shortest_round_trip() -> None:
    # The database answers at the middle of each trip, so each reading's estimate is exact
    # here; the kept one is the middle one, whose trip was shortest.
    machine = Machine(round_trips=[0.4, 0.01, 0.2])
    clock = machine.clock()
    sync = await clock.sync()
    assert machine.readings == 3
    assert sync.round_trip == pytest.approx(0.01)
    assert sync.database == DB_START + timedelta(seconds=0.4 + 0.005)
    assert clock() == machine.database()


async def test_its_error_is_at_most_half_the_round_trip() -> None:
    # A server that answers at the very start of a 0.2 s trip: the worst case.
    machine = Machine()
    trip = 0.2

    @asynccontextmanager
    async def answers_early() -> AsyncIterator[DatabaseNow]:
        async def now() -> datetime:
            read = machine.database()
            machine.advance(trip)
            return read

        yield now

    clock = DatabaseClock(
        answers_early, max_skew=5.0, monotonic=machine.monotonic, wall=machine.wall, samples=1
    )
    await clock.sync()
    error = (machine.database() - clock()).total_seconds()
    assert 0 < error <= trip / 2


async def test_a_host_clock_within_the_bound_is_logged_once_as_synced() -> None:
    machine = Machine(skew=1.5)
    clock = machine.clock(max_skew=5.0)
    with structlog.testing.capture_logs() as logs:
        await clock.sync()
        await clock.sync()
    assert [e["event"] for e in logs] == ["clock_synced"]
    assert logs[0]["offset_seconds"] == pytest.approx(1.5)
    assert clock.offset == pytest.approx(1.5)
    assert clock.skewed() is None


async def test_a_host_clock_ahead_beyond_the_bound_is_reported_at_every_sync() -> None:
    machine = Machine(skew=120.0)
    clock = machine.clock(max_skew=5.0)
    with structlog.testing.capture_logs() as logs:
        await clock.sync()
        machine.advance(30)
        await clock.sync()
    assert [(e["event"], e["log_level"]) for e in logs] == [("clock_skew", "error")] * 2
    assert logs[0]["offset_seconds"] == pytest.approx(120.0)
    assert logs[0]["max_skew_seconds"] == 5.0
    assert "120.0 s ahead of the database's" in logs[0]["reason"]
    assert "NTP" in logs[0]["reason"]
    assert clock.offset == pytest.approx(120.0)
    assert clock.skewed() == (
        "this host's clock is 120.0 s ahead of the database's (SAGA_CLOCK_SKEW_MAX is 5 s)"
    )
    # The engine's time is the database's all the same.
    assert clock() == machine.database()


async def test_a_host_clock_behind_says_so_and_clears_once_fixed() -> None:
    machine = Machine(skew=-42.0)
    clock = machine.clock(max_skew=5.0)
    with structlog.testing.capture_logs() as logs:
        await clock.sync()
        assert clock.skewed() == (
            "this host's clock is 42.0 s behind the database's (SAGA_CLOCK_SKEW_MAX is 5 s)"
        )
        machine.skew = 0.3  # NTP stepped it back in line
        await clock.sync()
    assert [e["event"] for e in logs] == ["clock_skew", "clock_skew_cleared"]
    assert clock.skewed() is None


async def test_it_cannot_be_read_before_its_first_sync() -> None:
    clock = Machine().clock()
    assert clock.offset == 0.0
    assert clock.skewed() is None
    with pytest.raises(RuntimeError, match=r"await sync\(\) first"):
        clock()


async def test_a_failed_sync_raises_and_the_clock_goes_on_from_the_last_one() -> None:
    machine = Machine()
    clock = machine.clock()
    await clock.sync()
    machine.fail = True
    with pytest.raises(ConnectionError):
        await clock.sync()
    machine.advance(5)
    assert clock() == machine.database()


async def test_keep_syncs_until_stopped_and_outlives_a_failed_sync() -> None:
    machine = Machine()
    stop = asyncio.Event()
    syncs = 0

    @asynccontextmanager
    async def session() -> AsyncIterator[DatabaseNow]:
        # The first sync is start-up's; keep's first one fails, its third stops it.
        nonlocal syncs
        syncs += 1
        if syncs == 2:
            raise ConnectionError("the database is down")
        if syncs == 4:
            stop.set()
        async with machine.session() as now:
            yield now

    clock = DatabaseClock(
        session, max_skew=5.0, monotonic=machine.monotonic, wall=machine.wall, samples=1
    )
    await clock.sync()
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(clock.keep(stop, interval=0.001), 10)
    assert syncs == 4
    assert [e["event"] for e in logs] == ["clock_sync_failed"]
    assert "the database is down" in logs[0]["error"]
    assert clock() == machine.database()


def test_it_needs_a_reading_per_sync() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Machine().clock(samples=0)
