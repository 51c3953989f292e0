"""Data flowing through sagas on real PostgreSQL and RabbitMQ: the order saga v3 with the
example shop (its releases undo the reservations their actions made, its notification is
built from the charge, its output names the charge), and a participant of the test's own for
an action that timed out and one whose result fails its declared model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from adapters.participant import Participant
from adapters.rabbitmq.topology import Topology
from examples.shop.schema import credit_reservations, payments, stock, stock_reservations
from examples.shop.verify import check_effects
from orchestrator import Retry, Saga
from orchestrator.messages import Command, Exchange
from orchestrator.state import SagaState
from sagas.order import order_v3
from tests.fixtures.polling import eventually
from tests.integration.harness import System, drain, order_input, running_system
from tests.integration.hosted import host


class Locker(BaseModel):
    locker_id: str


class Held(BaseModel):
    locker_id: int


# One step the saga undoes when it fails, its result declared (so its undo is given the
# result when there is one): held for 0.5 s at most, tried once.
timed = Saga("locker_timed", version=1, input=Locker, timeout=0.5)
timed.remote(
    "hold",
    command="lockers.hold",
    compensation="lockers.free",
    retry=Retry(max_attempts=1),
    result=Held,
)

# The same step, tried up to three times.
typed = Saga("locker_typed", version=1, input=Locker)
typed.remote(
    "hold",
    command="lockers.hold",
    compensation="lockers.free",
    retry=Retry(max_attempts=3),
    result=Held,
)


@pytest.fixture
async def system(database_url: str, topology: Topology, amqp_url: str) -> AsyncIterator[System]:
    async with running_system(database_url, topology, amqp_url, [order_v3, timed, typed]) as s:
        yield s


def lockers(freed: list[Command], *, hang: bool = False) -> Participant:
    """`lockers.hold` hangs (past its timeout: the participant cancels it), or answers a
    result without the id Held requires; `lockers.free` records what it is given."""
    participant = Participant("lockers")

    @participant.handler("lockers.hold")
    async def hold(cmd: Command) -> dict[str, Any]:
        if hang:
            await asyncio.Event().wait()
        return {"locker": cmd.payload["locker_id"]}

    @participant.handler("lockers.free")
    async def free(cmd: Command) -> dict[str, Any]:
        freed.append(cmd)
        return {"freed": True}

    return participant


async def bodies(queue: Any) -> dict[str, dict[str, Any]]:
    """Command bodies a spy received, by routing key (the last of each)."""
    out = {}
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        out[message.routing_key] = json.loads(message.body)
    return out


async def rows(system: System, table: sa.Table, state: SagaState) -> dict[int, Any]:
    """id -> released_at of the saga's reservations in the shop's own table."""
    async with system.shop.connect() as conn:
        found = await conn.execute(
            sa.select(table.c.id, table.c.released_at).where(table.c.saga_id == state.saga_id)
        )
        return {r.id: r.released_at for r in found}


async def test_the_order_saga_passes_the_charge_on_and_names_it_in_its_output(
    system: System,
) -> None:
    notices = await system.spy(Exchange.COMMANDS, "notifications.#")
    outcomes = await system.spy(Exchange.EVENTS, "order.completed")
    await system.start_participants()
    await system.start_order("k-v3", order_input("v3-1"))
    state = await system.wait_status("k-v3", "completed")
    assert state.version == 3
    async with system.shop.connect() as conn:
        charge = await conn.scalar(
            sa.select(payments.c.id).where(payments.c.saga_id == state.saga_id)
        )
    assert charge is not None
    assert state.output == {"order_id": "v3-1", "charge_id": charge, "charged": "25.00"}
    (notice,) = (await bodies(notices)).values()
    assert notice["payload"] == {
        "order_id": "v3-1",
        "customer_id": "cust-ok",
        "charge_id": charge,
        "charged": "25.00",
    }
    assert state.steps[3].payload == notice["payload"]  # kept with the step
    (event,) = await eventually(lambda: drain(outcomes), message="the completed event")
    assert event["result"] == state.output
    assert await check_effects(system.shop, {"k-v3": state}) == []


async def test_a_declined_payment_releases_exactly_the_reservations_that_were_made(
    system: System,
) -> None:
    commands = await system.spy(Exchange.COMMANDS, "#")
    await system.start_participants(["customers", "inventory", "notifications"])
    async with system.shop.connect() as conn:
        stock_before = await conn.scalar(sa.select(stock.c.qty).where(stock.c.sku == "SKU-BOOK"))
    await system.start_order("k-declined", order_input("declined-1", customer="cust-declined"))

    async def charging() -> SagaState | None:
        state = await system.saga_by_key("k-declined")
        return state if state is not None and state.steps[2].status == "running" else None

    state = await eventually(charging, message="the charge in flight")
    # Decoys: reservations of the same saga its actions did not make. A release that looked
    # them up by saga id would release these too (and put 1000 books back on the shelf).
    async with system.shop.begin() as conn:
        decoys = {
            "reserve_stock": await conn.scalar(
                sa.insert(stock_reservations)
                .values(saga_id=state.saga_id, lines=[{"sku": "SKU-BOOK", "qty": 1000}])
                .returning(stock_reservations.c.id)
            ),
            "reserve_credit": await conn.scalar(
                sa.insert(credit_reservations)
                .values(saga_id=state.saga_id, customer_id="cust-declined", amount=500)
                .returning(credit_reservations.c.id)
            ),
        }
    await system.start_participants(["payments"])
    state = await system.wait_status("k-declined", "compensated")
    assert state.error is not None and state.error["step"] == "charge_payment"

    sent = await bodies(commands)
    made = {s.name: s.result for s in state.steps[:2]}
    assert sent["customers.release_credit"]["action_result"] == made["reserve_credit"]
    assert sent["inventory.release"]["action_result"] == made["reserve_stock"]
    for table, step in (
        (stock_reservations, "reserve_stock"),
        (credit_reservations, "reserve_credit"),
    ):
        held = await rows(system, table, state)
        assert set(held) == {made[step]["reservation_id"], decoys[step]}
        assert held[made[step]["reservation_id"]] is not None, f"{step}: released"
        assert held[decoys[step]] is None, f"{step}: the decoy is still held"
    async with system.shop.connect() as conn:
        stock_after = await conn.scalar(sa.select(stock.c.qty).where(stock.c.sku == "SKU-BOOK"))
    assert stock_after == stock_before
    assert await check_effects(system.shop, {"k-declined": state}) == []


async def test_the_undo_of_an_action_that_timed_out_runs_and_is_told_it_has_no_result(
    system: System,
) -> None:
    freed: list[Command] = []
    spy = await system.spy(Exchange.COMMANDS, "lockers.free")
    await host(system, lockers(freed, hang=True))
    await system.start_order("k-timed", {"locker_id": "L-1"}, saga="locker_timed")
    state = await system.wait_status("k-timed", "compensated")
    assert state.error is not None and state.error["step"] == "hold"
    assert [(c.kind, c.action_result) for c in freed] == [("compensation", None)]
    assert "action_result" not in (await bodies(spy))["lockers.free"]


async def test_a_reply_failing_the_declared_model_fails_the_step_with_the_validation_message(
    system: System,
) -> None:
    freed: list[Command] = []
    await host(system, lockers(freed))
    await system.start_order("k-typed", {"locker_id": "L-2"}, saga="locker_typed")
    state = await system.wait_status("k-typed", "compensated")
    hold = state.steps[0]
    assert hold.error is not None and hold.error["type"] == "invalid_result"
    assert hold.error["message"] == "the result does not match Held: locker_id: Field required"
    assert hold.attempt == 1, "not retried: asking again gets the same answer"
    assert state.error is not None and state.error["step"] == "hold"
    # It acted: it is undone, with what it answered.
    assert [c.action_result for c in freed] == [{"locker": "L-2"}]
    history = await system.history(state.saga_id)
    failed = [h for h in history if h.event == "step_failed" and h.step == "hold"]
    assert failed and failed[0].detail is not None
    assert failed[0].detail["error"] == hold.error
