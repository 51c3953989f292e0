"""Bugs planted in a chaos run on purpose, one per verdict rule, to show each rule fails a run
(tests/chaos/test_planted.py): a verdict nobody has seen fail proves nothing.

- `exit`: a participant process stops by itself mid-run (SIGTERM, as a crash bug would end
  it): an unplanned exit.
- `outcome`: the orders whose card is declined are planned to complete: their (right)
  compensation is an outcome no fault explains.
- `unfired`: an orchestrator is started armed with a fault point it will not reach in the
  run: an armed point that never fires.
- `ledger`: the shop's effects ledger gets a second row for one effect of a completed order
  before the checks run: a double effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from examples.shop.schema import effects
from tests.chaos.injector import Injector
from tests.chaos.workload import COMPLETED, Order

PLANTS = frozenset({"exit", "outcome", "unfired", "ledger"})
UNREACHED = "after_commit_before_ack@1000000"


def check(plants: frozenset[str]) -> None:
    if unknown := plants - PLANTS:
        raise ValueError(f"unknown plants {sorted(unknown)}; known: {sorted(PLANTS)}")


def plan(orders: Sequence[Order], plants: frozenset[str]) -> list[Order]:
    if "outcome" not in plants:
        return list(orders)
    return [
        replace(o, scenario=replace(o.scenario, expect=COMPLETED))
        if o.scenario.kind == "card declined"
        else o
        for o in orders
    ]


def arms(orchestrators: Sequence[str], plants: frozenset[str]) -> dict[str, str]:
    return {orchestrators[0]: UNREACHED} if "unfired" in plants else {}


async def stop_a_participant(injector: Injector, after: float, plants: frozenset[str]) -> None:
    if "exit" not in plants:
        return
    await asyncio.sleep(after)  # once the load is steady, like the schedule's first fault
    proc = injector.procs.procs[injector.shops[0]]
    proc.terminate()


async def double_an_effect(shop: AsyncEngine, saga_ids: Sequence[object]) -> None:
    """Copies the ledger row of one effect of the first of `saga_ids` that has one."""
    async with shop.begin() as conn:
        row = (
            await conn.execute(
                sa.select(effects.c.command, effects.c.saga_id, effects.c.order_id)
                .where(effects.c.saga_id.in_(list(saga_ids)))
                .limit(1)
            )
        ).first()
        assert row is not None, "no effect to double: no saga completed"
        await conn.execute(sa.insert(effects).values(**row._asdict()))
