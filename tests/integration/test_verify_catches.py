"""The checkers of the shop's data fed doctored inputs on a real database: `ledger` and
`check_effects` (examples/shop/verify.py) and the chaos run's `verify`
(tests/chaos/invariants.py). Each test first shows its world undoctored passing, then
doctors one thing (a ledger row, a state, a history entry) and sees exactly that reported:
the e2e, demo and chaos runs trust their empty answers, so both must hold.

The world: order sagas run to their ends by the real state machine (tests/fixtures/
order_runs.py), and the shop's effects ledger as one execution of each leaves it."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.database import make_engine
from examples.shop import schema
from examples.shop.schema import effects
from examples.shop.verify import check_effects, ledger
from orchestrator.state import SagaState, SagaStatus
from tests.chaos.invariants import Verdict, verify
from tests.chaos.workload import COMPENSATED, COMPLETED, RANDOM_CANCEL, SCENARIOS, Order
from tests.fixtures.order_runs import (
    CHARGE,
    NOTIFY,
    UNDO_CREDIT,
    UNDO_STOCK,
    Run,
    cancelled,
    compensated,
    completed,
    order_input,
    parked,
    running,
)

NORMAL = SCENARIOS[0]
OUT_OF_STOCK = next(s for s in SCENARIOS if s.kind == "out of stock")
assert NORMAL.expect == COMPLETED and OUT_OF_STOCK.expect == COMPENSATED


@dataclass
class World:
    shop: AsyncEngine
    runs: list[Run]

    def run(self, key: str) -> Run:
        return next(r for r in self.runs if r.key == key)

    def states(self) -> dict[str, SagaState]:
        return {r.key: r.state for r in self.runs}

    async def add(self, key: str, command: str) -> None:
        """One more row in the ledger: `command` applied to `key`'s order (again)."""
        async with self.shop.begin() as conn:
            await conn.execute(
                effects.insert().values(
                    command=command, saga_id=self.run(key).saga_id, order_id=key
                )
            )

    async def remove(self, key: str, command: str) -> None:
        """`command`'s effect on `key`'s order gone from the ledger."""
        async with self.shop.begin() as conn:
            deleted = await conn.execute(
                effects.delete().where(
                    effects.c.saga_id == self.run(key).saga_id, effects.c.command == command
                )
            )
        assert deleted.rowcount == 1


@pytest.fixture
async def shop(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    await schema.create(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def world(shop: AsyncEngine) -> World:
    """A completed, a compensated and a cancelled order, each effect in the ledger once."""
    runs = [completed(), compensated(), cancelled()]
    async with shop.begin() as conn:
        await conn.execute(
            effects.insert(),
            [
                {"command": c, "saga_id": r.saga_id, "order_id": r.key}
                for r in runs
                for c in r.effects
            ],
        )
    return World(shop, runs)


# -- ledger and check_effects --------------------------------------------------------------


async def test_ledger_counts_each_row_of_the_sagas_asked_for(world: World) -> None:
    ids: list[object] = [r.saga_id for r in world.runs]
    one_each = Counter({(str(r.saga_id), c): 1 for r in world.runs for c in r.effects})
    assert await ledger(world.shop, ids) == one_each

    await world.add("k-completed", CHARGE)
    async with world.shop.begin() as conn:  # another saga's effect
        await conn.execute(
            effects.insert().values(command=CHARGE, saga_id=uuid.uuid4(), order_id="x")
        )
    charged_twice = (str(world.run("k-completed").saga_id), CHARGE)
    assert await ledger(world.shop, ids) == one_each + Counter({charged_twice: 1})
    assert await ledger(world.shop, ids[1:]) == Counter(
        {k: n for k, n in one_each.items() if k[0] != charged_twice[0]}
    )


Doctor = Callable[[World], Awaitable[None]]


async def charge_twice(w: World) -> None:
    await w.add("k-completed", CHARGE)


async def lose_an_undo(w: World) -> None:
    await w.remove("k-compensated", UNDO_CREDIT)


async def lose_an_effect(w: World) -> None:
    await w.remove("k-completed", NOTIFY)


async def undo_a_completed_order(w: World) -> None:
    await w.add("k-completed", UNDO_STOCK)


async def charge_a_compensated_order(w: World) -> None:
    await w.add("k-compensated", CHARGE)


async def notify_a_cancelled_order(w: World) -> None:
    await w.add("k-cancelled", NOTIFY)


async def notify_a_compensated_order(w: World) -> None:
    await w.add("k-compensated", NOTIFY)


@pytest.mark.parametrize(
    ("doctor", "reported"),
    [
        (charge_twice, "{k-completed} payments.charge applied 2 times"),
        (lose_an_undo, "k-compensated: compensated but customers.reserve_credit was never undone"),
        (lose_an_effect, "k-completed: completed but notifications.order_confirmed has no effect"),
        (undo_a_completed_order, "k-completed: completed but inventory.release ran"),
        (charge_a_compensated_order, "k-compensated: compensated but the card was charged"),
        (notify_a_cancelled_order, "k-cancelled: cancelled but the customer was notified"),
        (notify_a_compensated_order, "k-compensated: compensated but the customer was notified"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
async def test_check_effects_reports_a_doctored_ledger(
    world: World, doctor: Doctor, reported: str
) -> None:
    assert await check_effects(world.shop, world.states()) == []
    await doctor(world)
    expected = reported.replace("{k-completed}", str(world.run("k-completed").saga_id))
    assert await check_effects(world.shop, world.states()) == [expected]


async def test_check_effects_reports_a_saga_not_finished_cleanly(world: World) -> None:
    states = world.states()
    assert await check_effects(world.shop, states) == []
    for run in (parked(), running()):
        states[run.key] = run.state
    assert await check_effects(world.shop, states) == [
        "k-parked: not finished cleanly (failed)",
        "k-running: not finished cleanly (running)",
    ]


# -- the chaos run's verify -----------------------------------------------------------------


def plan(world: World) -> list[Order]:
    """The orders the runs are of, each with the scenario its ending was planned by."""
    scenarios = {"k-completed": NORMAL, "k-compensated": OUT_OF_STOCK, "k-cancelled": RANDOM_CANCEL}
    return [Order(scenarios[r.key], r.key, order_input(r.key), None) for r in world.runs]


async def verdict(
    world: World,
    orders: list[Order] | None = None,
    runs: list[Run] | None = None,
    dead_letters: list[str] | None = None,
) -> Verdict:
    runs = world.runs if runs is None else runs
    return await verify(
        world.shop,
        plan(world) if orders is None else orders,
        {r.key: r.state for r in runs},
        [e for r in runs for e in r.history],
        dead_letters or [],
    )


async def test_verify_passes_the_undoctored_world(world: World) -> None:
    found = await verdict(world)
    assert found.problems() == []
    assert found.outcomes == Counter({"completed": 1, "compensated": 1, "cancelled": 1})
    assert found.unexpected_outcomes == {}


@pytest.mark.parametrize(
    ("doctor", "reported"),
    [
        (charge_twice, "double effect: {k-completed} payments.charge applied 2 times"),
        (
            lose_an_undo,
            "missing compensation: k-compensated compensated: "
            "customers.reserve_credit never undone",
        ),
        (notify_a_cancelled_order, "cancelled but notified: k-cancelled"),
        (
            lose_an_effect,
            "shop data: k-completed: completed but notifications.order_confirmed has no effect",
        ),
        (
            charge_a_compensated_order,
            "shop data: k-compensated: compensated but the card was charged",
        ),
        (
            notify_a_compensated_order,
            "shop data: k-compensated: compensated but the customer was notified",
        ),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
async def test_verify_reports_a_doctored_ledger(
    world: World, doctor: Doctor, reported: str
) -> None:
    assert (await verdict(world)).problems() == []
    await doctor(world)
    expected = reported.replace("{k-completed}", str(world.run("k-completed").saga_id))
    assert (await verdict(world)).problems() == [expected]


async def test_verify_reports_a_lost_saga(world: World) -> None:
    orders = plan(world)
    assert (await verdict(world, orders)).problems() == []
    lost = Order(NORMAL, "k-lost", order_input("k-lost"), None)
    assert (await verdict(world, [*orders, lost])).problems() == ["lost (started, no saga): k-lost"]


async def test_verify_reports_a_doctored_history(world: World) -> None:
    assert (await verdict(world)).problems() == []
    first, *others = world.runs
    doctored = replace(first, history=[replace(e, seq=e.seq - 1) for e in first.history[1:]])
    problems = (await verdict(world, runs=[doctored, *others])).problems()
    assert problems == [f"history: {first.saga_id}: saga_started recorded 0 times"]


async def test_verify_reports_a_doctored_state(world: World) -> None:
    """The completed order's saga said compensated: its effects are not undone, its card is
    charged, and its history ended otherwise."""
    assert (await verdict(world)).problems() == []
    first, *others = world.runs
    lying = replace(first, state=replace(first.state, status=SagaStatus.COMPENSATED))
    found = await verdict(world, runs=[lying, *others])
    assert found.missing_compensations == [
        "k-completed compensated: customers.reserve_credit never undone",
        "k-completed compensated: inventory.reserve never undone",
    ]
    assert found.effect_problems == [
        "k-completed: compensated but the card was charged",
        "k-completed: compensated but the customer was notified",
    ]
    assert found.history_problems == [
        f"{first.saga_id}: status compensated but terminal entries ['saga_completed']"
    ]
    unplanned = "outcome other than planned, no fault explains it: k-completed compensated"
    assert unplanned in found.problems()
    found.excused = {"k-completed": "a fault the run recorded"}
    assert unplanned not in found.problems()


async def test_verify_reports_a_saga_not_terminal_and_one_parked(world: World) -> None:
    assert (await verdict(world)).problems() == []
    stuck, parked_ = running(), parked()
    async with world.shop.begin() as conn:
        await conn.execute(
            effects.insert(),
            [
                {"command": c, "saga_id": r.saga_id, "order_id": r.key}
                for r in (stuck, parked_)
                for c in r.effects
            ],
        )
    orders = [
        *plan(world),
        *(Order(NORMAL, r.key, order_input(r.key), None) for r in (stuck, parked_)),
    ]
    found = await verdict(world, orders, [*world.runs, stuck, parked_])
    error = (parked_.state.error or {}).get("message")
    assert found.problems() == [
        "not terminal: k-running running",
        f"history: {stuck.saga_id}: status running but terminal entries []",
        f"parked (none expected): k-parked: {error}",
        "outcome other than planned, no fault explains it: k-running running",
        "outcome other than planned, no fault explains it: k-parked failed",
    ]


async def test_verify_reports_dead_letters(world: World) -> None:
    assert (await verdict(world)).problems() == []
    found = await verdict(world, dead_letters=["saga.requests: invalid_start"])
    assert found.problems() == ["dead-lettered: saga.requests: invalid_start"]
