"""A saga module for `saga run` in tests/e2e/test_many_orchestrators.py, loaded next to
`sagas.order` (SAGA_MODULES=sagas.order,tests.e2e.express_order).

`order_express` is the order saga with a courier booked in its parallel group. The order
saga's steps wait 30 s for an answer, and the shop's participants heartbeat while they work,
so none of its steps times out within a test's minute: this saga's courier step waits
COURIER_TIMEOUT seconds, and the test's courier (tests/e2e/wire.py) never answers a first
attempt. Every express order therefore times out once, schedules a retry and is dispatched
again by the timer sweep: the timers that a fleet of orchestrators must fire exactly once.
"""

from __future__ import annotations

from orchestrator import Retry, Saga
from sagas.order import OrderPlaced

COURIER_TIMEOUT = 5.0

express = Saga("order_express", version=1, input=OrderPlaced, timeout=30)
with express.parallel():
    express.remote(
        "reserve_credit",
        command="customers.reserve_credit",
        compensation="customers.release_credit",
    )
    express.remote("reserve_stock", command="inventory.reserve", compensation="inventory.release")
    express.remote(
        "book_courier",
        command="couriers.book",
        compensation="couriers.release",
        timeout=COURIER_TIMEOUT,
        # Until the courier answers: a reply that is late under load times the attempt out
        # again, and the outcome of the saga must not depend on how busy the machine is.
        retry=Retry(max_attempts=None, initial_interval=0.2, max_interval=1.0),
    )
express.remote(
    "charge_payment",
    command="payments.charge",
    pivot=True,
    retry=Retry(max_attempts=3),
)
express.remote(
    "notify_customer",
    command="notifications.order_confirmed",
    retry=Retry(max_attempts=20, initial_interval=1.0, max_interval=30.0),
)
