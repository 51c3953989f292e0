"""The order saga: the case the engine exists for.

reserve credit and stock (in parallel) -> fraud review (orders above REVIEW_ABOVE only) ->
charge payment (the pivot) -> notify the customer. A failure before or at the pivot undoes
the reservations in reverse; after the pivot the notification is retried until it goes
through (or the saga is parked for an operator).

Data flows through it (v3): each reservation answers with its id, which its release gets
back (`action_result`); the notification is built from the charge's result (`payload=`);
the order's output names the charge (`output=`).

A person reviews large orders (v4): the saga waits for the signal `fraud_review` from the
fraud desk, at most a day. An approval lets the charge go ahead; a rejection, or no answer
in time, undoes the reservations. Its orders are found by customer, amount and charge
(search fields: `saga list --where customer_id=c-17 --where "amount>1000"`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import Retry, Saga, SearchField
from orchestrator.definition import GuardContext


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64)
    qty: int = Field(gt=0, le=10_000)


class OrderPlaced(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2)
    items: list[OrderItem] = Field(min_length=1, max_length=100)


class Reserved(BaseModel):
    """What a reservation (credit or stock) answers: the id its release is given back."""

    reservation_id: int


class Charged(BaseModel):
    """What the payment answers: the charge, and the amount charged."""

    charge_id: int
    charged: Decimal


class FraudReview(BaseModel):
    """The fraud desk's verdict, the payload of the signal `fraud_review`."""

    model_config = ConfigDict(extra="forbid")

    approved: bool
    reviewer: str = Field(min_length=1, max_length=64)
    note: str = Field("", max_length=1000)


# Orders above this amount wait for a person's review before the card is charged.
REVIEW_ABOVE = Decimal("1000")
REVIEW_TIMEOUT = 24 * 3600.0


def needs_review(ctx: GuardContext) -> bool:
    return Decimal(str(ctx.input["amount"])) > REVIEW_ABOVE


def review_approved(ctx: GuardContext) -> bool:
    """The charge's guard: no review was needed, or the reviewer approved the order."""
    if "fraud_review" not in ctx.results:
        return True
    return ctx.result("fraud_review", FraudReview).approved


def confirmation(ctx: GuardContext) -> dict[str, Any]:
    """The notification's payload: the order, and the charge that paid for it."""
    charge = ctx.result("charge_payment", Charged)
    return {
        "order_id": ctx.input["order_id"],
        "customer_id": ctx.input["customer_id"],
        "charge_id": charge.charge_id,
        "charged": str(charge.charged),
    }


def receipt(ctx: GuardContext) -> dict[str, Any]:
    """The order's output: which charge paid for it."""
    charge = ctx.result("charge_payment", Charged)
    return {
        "order_id": ctx.input["order_id"],
        "charge_id": charge.charge_id,
        "charged": str(charge.charged),
    }


def _reserve(saga: Saga) -> None:
    """Credit and stock, in parallel; each answers the id its release gets back."""
    with saga.parallel():
        saga.remote(
            "reserve_credit",
            command="customers.reserve_credit",
            compensation="customers.release_credit",
            result=Reserved,
        )
        saga.remote(
            "reserve_stock",
            command="inventory.reserve",
            compensation="inventory.release",
            result=Reserved,
        )


def _charge_and_confirm(saga: Saga, *, guard: Any = None) -> None:
    saga.remote(
        "charge_payment",
        command="payments.charge",
        pivot=True,
        retry=Retry(max_attempts=3),
        result=Charged,
        guard=guard,
        on_guard_false="fail",
    )
    saga.remote(
        "notify_customer",
        command="notifications.order_confirmed",
        retry=Retry(max_attempts=20, initial_interval=1.0, max_interval=30.0),
        payload=confirmation,
    )


# v4: large orders wait for the fraud desk's review before the charge. Found by customer and
# amount from the start, and by charge once completed.
saga = Saga(
    "order",
    version=4,
    input=OrderPlaced,
    timeout=30,
    output=receipt,
    search=("customer_id", "amount", SearchField("output.charge_id", type=int)),
)
_reserve(saga)
saga.wait(
    "fraud_review",
    timeout=REVIEW_TIMEOUT,
    on_timeout="fail",
    result=FraudReview,
    guard=needs_review,
)
_charge_and_confirm(saga, guard=review_approved)

# v3, v2 and v1 stay loaded while instances started on them may still be unfinished
# somewhere (`saga definitions` shows them); a process without them refuses to start.

# v3: the reservations' and the charge's results are checked and passed on.
order_v3 = Saga("order", version=3, input=OrderPlaced, timeout=30, output=receipt)
_reserve(order_v3)
_charge_and_confirm(order_v3)


def _pay_and_notify(saga: Saga) -> None:
    saga.remote(
        "charge_payment",
        command="payments.charge",
        pivot=True,
        # A declined card is a business answer, not a fault: the participant marks it
        # non-retryable.
        retry=Retry(max_attempts=3),
    )
    saga.remote(
        "notify_customer",
        command="notifications.order_confirmed",
        retry=Retry(max_attempts=20, initial_interval=1.0, max_interval=30.0),
    )


# v2 reserved credit and stock in parallel, passing nothing on.
order_v2 = Saga("order", version=2, input=OrderPlaced, timeout=30)
with order_v2.parallel():
    order_v2.remote(
        "reserve_credit",
        command="customers.reserve_credit",
        compensation="customers.release_credit",
    )
    order_v2.remote("reserve_stock", command="inventory.reserve", compensation="inventory.release")
_pay_and_notify(order_v2)

# v1 reserved one after the other.
order_v1 = Saga("order", version=1, input=OrderPlaced, timeout=30)
order_v1.remote(
    "reserve_credit",
    command="customers.reserve_credit",
    compensation="customers.release_credit",
)
order_v1.remote("reserve_stock", command="inventory.reserve", compensation="inventory.release")
_pay_and_notify(order_v1)
