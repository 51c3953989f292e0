"""Signals and waits as the metrics adapter counts them, from what the engine really observes
(Engine.signal and the timer sweep, on the memory store, with `metrics.observe` as observer):
taken, held (not counted again when taken), refused with and without a saga, and how long
waits lasted, signalled or timed out."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from adapters import metrics
from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator import Saga
from orchestrator.engine import Engine
from orchestrator.messages import SignalSaga, StartSaga
from orchestrator.registry import Registry
from sagas.order import OrderPlaced
from tests.unit.test_engine import ORDER, Clock

# A saga name of this module's own: the registry's counters are process-wide.
metered = Saga("unit_signals", version=1, input=OrderPlaced)
metered.wait("approve", timeout=3600)
metered.wait("ship", timeout=60)


def counted() -> dict[str, float]:
    saga, signal = "unit_signals", "approve"
    return {
        "taken": metrics.value(
            "saga_signals_received_total", saga=saga, signal=signal, result="taken"
        ),
        "held": metrics.value(
            "saga_signals_received_total", saga=saga, signal="ship", result="held"
        ),
        "refused": metrics.value(
            "saga_signals_refused_total", saga=saga, signal="deny", reason="not_waited_for"
        ),
        "unknown": metrics.value(
            "saga_signals_refused_total", saga="", signal=signal, reason="unknown_saga"
        ),
        "waited": metrics.value(
            "saga_wait_seconds_sum", saga=saga, signal=signal, outcome="signalled"
        ),
        "waits": metrics.value(
            "saga_wait_seconds_count", saga=saga, signal=signal, outcome="signalled"
        ),
    }


async def test_signals_and_waits_move_their_metrics() -> None:
    clock = Clock()
    engine = Engine(
        MemoryStore(clock=clock),
        MemoryPublisher(),
        Registry([metered]),
        clock=clock,
        observe=metrics.observe,
    )
    before = counted()
    started = await engine.start(StartSaga(saga="unit_signals", key="m-1", input=ORDER))
    saga_id = started.saga_id
    assert isinstance(saga_id, UUID)

    async def send(signal: str, signal_id: str, key: str | None = None) -> str:
        target = SignalSaga(
            saga_id=None if key else saga_id, key=key, signal=signal, signal_id=signal_id
        )
        return (await engine.signal(target)).result

    assert await send("ship", "s-1") == "held"  # before its wait begins
    assert await send("deny", "d-1") == "refused"
    assert await send("approve", "n-1", key="nobody") == "refused"
    clock.now += timedelta(seconds=90)
    assert await send("approve", "a-1") == "taken"  # then ship takes its held one
    assert await send("approve", "a-1") == "duplicate"  # counts nowhere

    moved = {k: v - before[k] for k, v in counted().items()}
    assert moved == {
        "taken": 1,
        "held": 1,
        "refused": 1,
        "unknown": 1,
        "waited": 90,
        "waits": 1,
    }


async def test_a_wait_that_times_out_is_timed_as_such() -> None:
    clock = Clock()
    engine = Engine(
        MemoryStore(clock=clock),
        MemoryPublisher(),
        Registry([metered]),
        clock=clock,
        observe=metrics.observe,
    )
    labels = {"saga": "unit_signals", "signal": "approve", "outcome": "timed_out"}
    before = [metrics.value(f"saga_wait_seconds_{part}", **labels) for part in ("count", "sum")]
    await engine.start(StartSaga(saga="unit_signals", key="m-2", input=ORDER))
    clock.now += timedelta(seconds=3601)
    assert await engine.fire_timers() == 1
    after = [metrics.value(f"saga_wait_seconds_{part}", **labels) for part in ("count", "sum")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 3601]
