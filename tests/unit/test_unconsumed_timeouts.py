"""A timeout of a command whose queue had no consumer says so (TimersDue.unconsumed), in the
step's error and the saga's, so "no reply" reads as "nobody is listening": a participant
that is not running, or a misspelled service. The engine takes that from its `unconsumed`
provider at each timer sweep; everything else about the timeout stays as it was."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator.definition import Saga
from orchestrator.engine import Engine
from orchestrator.machine import Decision, TimersDue
from orchestrator.messages import StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, Run, events, shop

HOTEL = {"hotel.book": "commands.hotel", "hotel.cancel": "commands.hotel"}
NOBODY = (
    "nobody consumes commands.hotel: is its participant running, or is the service name misspelled?"
)


def booking(**step: Any) -> Saga:
    """One step, `book`, sent to service `hotel` (timeout 10 s, tried once)."""
    s = shop()
    s.remote("book", command="hotel.book", compensation=None, retry=ONCE, **step)
    return s


def timers(run: Run, seconds: float, unconsumed: Mapping[str, str]) -> Decision:
    run.now += timedelta(seconds=seconds)
    return run.feed(TimersDue(unconsumed))


def test_a_timeout_of_a_command_nobody_consumes_names_the_queue_and_what_to_check() -> None:
    run = Run(booking())
    decision = timers(run, 10, HOTEL)
    assert events(decision)[0] == "step_timed_out"
    assert run.detail("step_timed_out", "book") == {
        "attempt": 1,
        "timeout": "start_to_close",
        "unconsumed": "commands.hotel",
    }
    assert run.step("book").error == {
        "type": "timeout",
        "timeout": "start_to_close",
        "message": f"no reply within 10s (start-to-close); {NOBODY}",
        "retryable": True,
        "unconsumed": True,
    }
    # The saga's own error carries it too: what `saga status` shows first.
    assert run.status() == SagaStatus.COMPENSATED
    assert run.state.error is not None
    assert NOBODY in run.state.error["message"]


def test_a_timeout_of_a_consumed_command_is_the_plain_timeout() -> None:
    for unconsumed in ({}, {"payments.charge": "commands.payments"}):
        run = Run(booking())
        timers(run, 10, unconsumed)
        assert run.detail("step_timed_out", "book") == {"attempt": 1, "timeout": "start_to_close"}
        assert run.step("book").error == {
            "type": "timeout",
            "timeout": "start_to_close",
            "message": "no reply within 10s (start-to-close)",
            "retryable": True,
        }


def test_the_timeout_that_fired_is_kept_beside_the_queue() -> None:
    run = Run(booking(schedule_to_start=3))
    timers(run, 3, HOTEL)
    error = run.step("book").error
    assert error is not None
    assert error["timeout"] == "schedule_to_start"
    assert error["message"] == f"no reply within 3s (schedule-to-start); {NOBODY}"


def test_a_compensation_nobody_consumes_says_so_when_it_parks_the_saga() -> None:
    s = shop()
    s.remote(
        "book",
        command="hotel.book",
        compensation="hotel.cancel",
        retry=ONCE,
        compensation_retry=ONCE,
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.succeed()  # book: the hotel answered then
    run.fail("card declined", retryable=False)  # charge: undo the booking
    assert run.last.command == "hotel.cancel"
    timers(run, 10, HOTEL)
    assert run.detail("compensation_timed_out", "book")["unconsumed"] == "commands.hotel"
    assert run.status() == SagaStatus.FAILED
    assert run.step("book").status == StepStatus.COMPENSATING
    assert run.state.error is not None
    assert NOBODY in run.state.error["message"]


def test_a_local_step_nobody_consumes_points_at_saga_worker() -> None:
    s = shop()

    @s.local(compensate=None, retry=ONCE)
    async def book(ctx: Any) -> None:
        return None

    run = Run(s)
    assert run.last.command == "local.shop.book"
    timers(run, 10, {"local.shop.book": "commands.local"})
    error = run.step("book").error
    assert error is not None and error["unconsumed"] is True
    assert error["message"] == (
        "no reply within 10s (start-to-close); nobody consumes commands.local: is `saga worker` "
        "running with these SAGA_MODULES?"
    )


async def test_the_engine_asks_its_provider_at_each_timer_sweep() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    unconsumed: dict[str, str] = {}
    store, publisher = MemoryStore(clock=lambda: now[0]), MemoryPublisher()
    saga = booking()
    engine = Engine(
        store, publisher, Registry([saga]), clock=lambda: now[0], unconsumed=lambda: unconsumed
    )
    for key in ("first", "second"):
        await engine.start(StartSaga(saga="shop", key=key, input={"n": 1}))
        now[0] += timedelta(seconds=10)
        assert await engine.fire_timers() == 1
        unconsumed = HOTEL  # known from the second sweep on

    first, second = [(await store.find(SagaQuery(key=k)))[0] for k in ("first", "second")]
    assert first.error is not None and second.error is not None
    assert NOBODY not in first.error["message"]
    assert NOBODY in second.error["message"]
