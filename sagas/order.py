"""The order saga: the case the engine exists for.

reserve credit and stock (in parallel) -> charge payment (the pivot) -> notify the customer.
A failure before or at the pivot undoes the reservations in reverse; after the pivot the
notification is retried until it goes through (or the saga is parked for an operator).
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import Retry, Saga


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


# v2: credit and stock are independent, so they are reserved in parallel.
saga = Saga("order", version=2, input=OrderPlaced, timeout=30)
with saga.parallel():
    saga.remote(
        "reserve_credit",
        command="customers.reserve_credit",
        compensation="customers.release_credit",
    )
    saga.remote("reserve_stock", command="inventory.reserve", compensation="inventory.release")
_pay_and_notify(saga)

# v1 reserved one after the other. It stays loaded while instances started on it may still be
# unfinished somewhere (`saga definitions` shows them); a process without it refuses to start.
order_v1 = Saga("order", version=1, input=OrderPlaced, timeout=30)
order_v1.remote(
    "reserve_credit",
    command="customers.reserve_credit",
    compensation="customers.release_credit",
)
order_v1.remote("reserve_stock", command="inventory.reserve", compensation="inventory.release")
_pay_and_notify(order_v1)
