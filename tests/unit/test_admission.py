"""Admission control (adapters/admission.py) against a counter the test moves."""

from __future__ import annotations

import asyncio

import pytest

from adapters.admission import Admission
from tests.fixtures.polling import eventually

DEADLINE = 5.0


class Active:
    """What the database would count; `reads` says how often it was asked."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = 0

    async def __call__(self) -> int:
        self.reads += 1
        return self.n


async def _held(admission: Admission, n: int) -> None:
    async def holding() -> bool:
        return admission.held == n

    await eventually(holding, timeout=DEADLINE, interval=0.01, message=f"{n} starts held")


async def test_without_a_limit_everything_goes_and_nothing_is_read() -> None:
    active = Active(10**6)
    assert await asyncio.wait_for(Admission(active, None).admit(50), DEADLINE) == 50
    assert active.reads == 0


async def test_below_the_limit_as_many_go_as_there_is_room_for() -> None:
    active = Active(1)
    admission = Admission(active, 3, interval=60)
    assert await asyncio.wait_for(admission.admit(5), DEADLINE) == 2
    assert active.reads == 1


async def test_at_the_limit_starts_wait_until_sagas_finish() -> None:
    active = Active(3)
    admission = Admission(active, 3, interval=0.01)
    waiting = asyncio.create_task(admission.admit(2))
    await _held(admission, 2)

    async def read_again() -> bool:  # it keeps reading while it holds them
        return active.reads >= 3

    await eventually(read_again, timeout=DEADLINE, interval=0.01)
    assert not waiting.done()
    active.n = 2  # one saga ended: room for one of the two
    assert await asyncio.wait_for(waiting, DEADLINE) == 1
    assert admission.held == 0


async def test_admitted_starts_count_until_the_next_reading() -> None:
    active = Active(0)
    admission = Admission(active, 3, interval=60)  # no new reading within the test
    assert await asyncio.wait_for(admission.admit(3), DEADLINE) == 3
    more = asyncio.create_task(admission.admit(1))
    await _held(admission, 1)
    assert not more.done(), "3 admitted since the reading of 0: the limit of 3 is reached"
    assert active.reads == 1
    more.cancel()


async def test_a_stopping_process_lets_held_starts_through() -> None:
    stopping = asyncio.Event()
    admission = Admission(Active(5), 5, interval=0.01, stopping=stopping)
    waiting = asyncio.create_task(admission.admit(4))
    await _held(admission, 4)
    assert not waiting.done()
    stopping.set()
    assert await asyncio.wait_for(waiting, DEADLINE) == 4


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        Admission(Active(0), 0)
