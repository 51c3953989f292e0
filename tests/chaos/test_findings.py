"""What the chaos harness found, pinned as small deterministic tests.

Finding 1 (short profile, seed 1, 2026-11-25): a compensated order whose stock reservation
was never released. What happened, from the saga's history and the shop's log:

1. the order saga v2 dispatched reserve_credit and reserve_stock (a parallel group);
2. the shop committed inventory.reserve (its ledger row and barrier row), then was SIGKILLed
   before publishing the reply;
3. reserve_credit failed (no credit): the saga began compensating and waited for
   reserve_stock, in flight;
4. the command was delivered again while PostgreSQL was in crash recovery (`pg_ctl restart
   -m immediate`): the barrier could not be reached, the participant SDK answered
   `failure`, `retryable: true` ("the database system is starting up");
5. the saga took that failure as "reserve_stock never happened" and finished `compensated`
   without sending inventory.release: the stock stays reserved for good.

The long profile (seed 8) hit the same gap in three sagas of 5,000, by two more paths: a
cancel while both branches were in flight, and a cancel while the step waited for its retry
(after which the first attempt's success came in and was ignored as stale). docs/guarantees.md
has the figures.

A failure reply speaks for one delivery; an earlier delivery of the same idempotency key may
have acted and lost its reply, and a later copy may still act. The engine treated a
timed-out step as possibly done (`StepState.outcome_uncertain`, compensated; the barrier turns
an undo of nothing into a null compensation, and its marker refuses any late copy) but not a
retryable failure. Fixed: a retryable failure counts as uncertain too; the test below pins it.
"""

from __future__ import annotations

from orchestrator.state import SagaStatus
from sagas.order import order_v2 as order
from tests.unit.builders import Run

ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "amount": "10.50",
    "items": [{"sku": "SKU-BOOK", "qty": 1}],
}


def test_a_step_in_flight_whose_redelivery_crashed_is_compensated() -> None:
    run = Run(order, ORDER)
    credit, stock = run.commands[-2:]
    assert (credit.step, stock.step) == ("reserve_credit", "reserve_stock")
    # The shop applied stock's first delivery and died before replying (nothing arrives).
    run.fail(
        "customer cannot cover 10.50", type="insufficient_credit", retryable=False, command=credit
    )
    assert run.status() == SagaStatus.COMPENSATING
    # Stock's redelivery meets a database in recovery: the handler crashes.
    run.fail(
        "the database system is starting up", type="OperationalError", retryable=True, command=stock
    )
    assert ("compensation", "reserve_stock") in run.sent
