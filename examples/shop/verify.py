"""Check the shop's own data against the sagas' outcomes: what the engine promises, measured
where the effects happened (the `effects` ledger has one row per applied effect)."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from examples.shop.schema import credit_reservations, effects, payments, stock_reservations
from orchestrator.state import SagaState, SagaStatus

ACTIONS = [
    "customers.reserve_credit",
    "inventory.reserve",
    "payments.charge",
    "notifications.order_confirmed",
]
NOTIFY = "notifications.order_confirmed"
UNDO = {
    "customers.reserve_credit": "customers.release_credit",
    "inventory.reserve": "inventory.release",
}


async def ledger(shop: AsyncEngine, saga_ids: list[object]) -> Counter[tuple[str, str]]:
    async with shop.connect() as conn:
        rows = await conn.execute(
            sa.select(effects.c.saga_id, effects.c.command).where(effects.c.saga_id.in_(saga_ids))
        )
        return Counter((str(r.saga_id), r.command) for r in rows)


async def check_effects(shop: AsyncEngine, sagas: dict[str, SagaState]) -> list[str]:
    """Problems: double effects, missing effects of completed orders, undos of completed
    ones, missing compensations, and undone (compensated, cancelled) orders charged or
    notified. A saga not finished cleanly (parked, running) is a problem too."""
    counts = await ledger(shop, [s.saga_id for s in sagas.values()])
    problems = [f"{sid} {cmd} applied {n} times" for (sid, cmd), n in counts.items() if n > 1]
    for key, state in sagas.items():
        sid = str(state.saga_id)
        done = {cmd for (s, cmd) in counts if s == sid}
        if state.status == SagaStatus.COMPLETED:
            problems += [
                f"{key}: completed but {cmd} has no effect" for cmd in ACTIONS if cmd not in done
            ]
            problems += [
                f"{key}: completed but {undo} ran" for undo in UNDO.values() if undo in done
            ]
        elif state.status in (SagaStatus.COMPENSATED, SagaStatus.CANCELLED):
            problems += [
                f"{key}: {state.status} but {cmd} was never undone"
                for cmd, undo in UNDO.items()
                if cmd in done and undo not in done
            ]
            if "payments.charge" in done:
                problems.append(f"{key}: {state.status} but the card was charged")
            if NOTIFY in done:
                problems.append(f"{key}: {state.status} but the customer was notified")
        else:
            problems.append(f"{key}: not finished cleanly ({state.status})")
    return problems


async def order_effects(shop: AsyncEngine, saga_id: UUID) -> tuple[Decimal | None, bool]:
    """What an order's saga left in the shop's tables: the amount charged (None: no charge),
    and whether it made reservations that are all released."""
    async with shop.connect() as conn:
        charged = await conn.scalar(
            sa.select(sa.func.sum(payments.c.amount)).where(payments.c.saga_id == saga_id)
        )
        held = []
        for table in (credit_reservations, stock_reservations):
            found = await conn.execute(
                sa.select(table.c.released_at).where(table.c.saga_id == saga_id)
            )
            held += [row.released_at is None for row in found]
    return charged, bool(held) and not any(held)
