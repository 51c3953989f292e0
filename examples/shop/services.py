"""The four example participant services of the order saga, on the shop's own tables.

Every handler is guarded by the shop's barrier (`adapters.participant.barrier`): it gets the
command and the connection of the barrier's transaction, so its writes and the record that the
command was handled commit together. Redeliveries, a compensation that overtakes its action and
an action that arrives after its compensation are the barrier's business, not the handlers'.
(The four services share one database and one barrier table here; real services would each
keep their own.)

Each reservation answers with its id and the charge with its own, and a release undoes the
reservation its command's `action_result` names (the result of the reservation it undoes):
no lookup by saga id, except for a command without one (the order saga v1 and v2 declare no
result model, so their compensations carry none; nor does an undo of a timed-out action).

Behaviour comes from the data, like a real shop: a customer without enough credit or with a
declined card, a SKU out of stock. Knobs for demos and tests ride on the order id:
`slow-…` orders stall in inventory.reserve (time to cancel them mid-flight), `long-…` orders
take `long_seconds` there (longer than a broker's consumer timeout, say), `hung-…` orders hang
there on their first attempt until the step's time limit cancels the handler, `flaky-…`
orders fail their first notification attempt (a transient error that is retried) and
`unreachable-…` orders can never be notified (past the pivot: the saga is parked). (The
shop's fraud desk, examples/shop/fraud_desk.py, rejects `suspect-…` orders above 1000.)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.participant import Participant, StepFailed
from adapters.participant.barrier import Barrier
from examples.shop import schema
from examples.shop.schema import (
    credit_reservations,
    customers,
    effects,
    notifications,
    payments,
    stock,
    stock_reservations,
)
from orchestrator.messages import Command


@dataclass(frozen=True)
class Knobs:
    slow_seconds: float = 2.0
    long_seconds: float = 10.0


def build(engine: AsyncEngine, knobs: Knobs | None = None) -> list[Participant]:
    """The shop's participants. The barrier's table must exist: `schema.create` installs it."""
    knobs = knobs or Knobs()
    barrier = schema.barrier(engine)
    return [
        customers_service(barrier),
        inventory_service(barrier, knobs),
        payments_service(barrier),
        notifications_service(barrier),
    ]


async def record_effect(conn: AsyncConnection, cmd: Command) -> None:
    """One ledger row per applied effect, in the effect's transaction."""
    await conn.execute(
        sa.insert(effects).values(
            command=cmd.command, saga_id=cmd.saga_id, order_id=cmd.payload["order_id"]
        )
    )


def _amount(cmd: Command) -> Decimal:
    return Decimal(str(cmd.payload["amount"]))


def _made(cmd: Command) -> int | None:
    """The reservation a release undoes, as its action answered (`action_result`); None when
    the command carries no result, or one without the id (a shop that did not answer it)."""
    result = cmd.action_result
    made = result.get("reservation_id") if isinstance(result, dict) else None
    return None if made is None else int(made)


def _held(table: sa.Table, cmd: Command) -> list[sa.ColumnElement[bool]]:
    """What a release releases: the reservation its action made, or without one named,
    every reservation the saga holds."""
    held = [table.c.saga_id == cmd.saga_id, table.c.released_at.is_(None)]
    made = _made(cmd)
    return held if made is None else [*held, table.c.id == made]


def customers_service(barrier: Barrier) -> Participant:
    customers_svc = Participant("customers")

    @customers_svc.handler("customers.reserve_credit")
    @barrier.guard
    async def reserve_credit(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        customer, amount = cmd.payload["customer_id"], _amount(cmd)
        left = await conn.scalar(
            sa.update(customers)
            .where(customers.c.id == customer, customers.c.credit >= amount)
            .values(credit=customers.c.credit - amount)
            .returning(customers.c.credit)
        )
        if left is None:
            raise StepFailed(
                "insufficient_credit", f"customer cannot cover {amount}", retryable=False
            )
        reservation = await conn.scalar(
            sa.insert(credit_reservations)
            .values(saga_id=cmd.saga_id, customer_id=customer, amount=amount)
            .returning(credit_reservations.c.id)
        )
        await record_effect(conn, cmd)
        return {"reservation_id": reservation, "reserved": str(amount), "credit_left": str(left)}

    @customers_svc.handler("customers.release_credit")
    @barrier.guard
    async def release_credit(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        released = (
            await conn.execute(
                sa.update(credit_reservations)
                .where(*_held(credit_reservations, cmd))
                .values(released_at=sa.func.now())
                .returning(credit_reservations.c.customer_id, credit_reservations.c.amount)
            )
        ).all()
        if not released:
            raise _nothing_to_undo(cmd)
        for row in released:
            await conn.execute(
                sa.update(customers)
                .where(customers.c.id == row.customer_id)
                .values(credit=customers.c.credit + row.amount)
            )
        await record_effect(conn, cmd)
        return {"released": str(sum(row.amount for row in released))}

    return customers_svc


def inventory_service(barrier: Barrier, knobs: Knobs) -> Participant:
    inventory_svc = Participant("inventory")

    @barrier.guard
    async def reserve_stock(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        items = cmd.payload["items"]
        for item in sorted(items, key=lambda i: str(i["sku"])):  # fixed order: no deadlocks
            taken = await conn.scalar(
                sa.update(stock)
                .where(stock.c.sku == item["sku"], stock.c.qty >= item["qty"])
                .values(qty=stock.c.qty - item["qty"])
                .returning(stock.c.qty)
            )
            if taken is None:
                # The barrier's savepoint puts back what earlier lines took.
                raise StepFailed("out_of_stock", f"not enough {item['sku']}", retryable=False)
        reservation = await conn.scalar(
            sa.insert(stock_reservations)
            .values(saga_id=cmd.saga_id, lines=items)
            .returning(stock_reservations.c.id)
        )
        await record_effect(conn, cmd)
        return {"reservation_id": reservation, "reserved": len(items)}

    @inventory_svc.handler("inventory.reserve")
    async def reserve(cmd: Command) -> dict[str, Any] | None:
        # The knobs: a slow warehouse system, or one that never answers. Waited for before
        # the barrier's transaction, as any slow outside call should be: an open transaction
        # would hold a pooled connection and pin the database's xmin for the whole wait.
        order_id = str(cmd.payload["order_id"])
        if order_id.startswith("slow-"):
            await asyncio.sleep(knobs.slow_seconds)
        elif order_id.startswith("long-"):
            await asyncio.sleep(knobs.long_seconds)
        elif order_id.startswith("hung-") and cmd.attempt == 1:
            await asyncio.Event().wait()  # until the step's start-to-close timeout
        return await reserve_stock(cmd)

    @inventory_svc.handler("inventory.release")
    @barrier.guard
    async def release_stock(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        released = (
            await conn.execute(
                sa.update(stock_reservations)
                .where(*_held(stock_reservations, cmd))
                .values(released_at=sa.func.now())
                .returning(stock_reservations.c.lines)
            )
        ).all()
        if not released:
            raise _nothing_to_undo(cmd)
        lines = [line for row in released for line in row.lines]
        for item in sorted(lines, key=lambda i: str(i["sku"])):
            await conn.execute(
                sa.update(stock)
                .where(stock.c.sku == item["sku"])
                .values(qty=stock.c.qty + item["qty"])
            )
        await record_effect(conn, cmd)
        return {"released": len(lines)}

    return inventory_svc


def payments_service(barrier: Barrier) -> Participant:
    payments_svc = Participant("payments")

    @payments_svc.handler("payments.charge")
    @barrier.guard
    async def charge(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        card_ok = await conn.scalar(
            sa.select(customers.c.card_ok).where(customers.c.id == cmd.payload["customer_id"])
        )
        if not card_ok:
            raise StepFailed("card_declined", "the card was declined", retryable=False)
        charge = await conn.scalar(
            sa.insert(payments)
            .values(
                saga_id=cmd.saga_id, customer_id=cmd.payload["customer_id"], amount=_amount(cmd)
            )
            .returning(payments.c.id)
        )
        await record_effect(conn, cmd)
        return {"charge_id": charge, "charged": str(_amount(cmd))}

    return payments_svc


def notifications_service(barrier: Barrier) -> Participant:
    notifications_svc = Participant("notifications")

    @notifications_svc.handler("notifications.order_confirmed")
    @barrier.guard
    async def notify(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        # The payload: the order's input (order v1, v2), or the order and its charge (v3).
        order_id = str(cmd.payload["order_id"])
        if order_id.startswith("flaky-") and cmd.attempt == 1:
            raise StepFailed("smtp_unavailable", "mail server did not answer", retryable=True)
        if order_id.startswith("unreachable-"):
            raise StepFailed("no_address", "the customer has no reachable address", retryable=False)
        await conn.execute(sa.insert(notifications).values(saga_id=cmd.saga_id, order_id=order_id))
        await record_effect(conn, cmd)
        return {"sent": True}

    return notifications_svc


def _nothing_to_undo(cmd: Command) -> StepFailed:
    # The barrier runs a compensation only after its action succeeded, so an empty release
    # means the data was changed behind the shop's back: park the saga for an operator.
    return StepFailed(
        "nothing_to_undo",
        f"{cmd.command}: reservation {_made(cmd) or '(any)'} of saga {cmd.saga_id} is not "
        "held, yet its action succeeded",
        retryable=False,
    )
