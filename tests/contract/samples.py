"""Sample sagas, messages and lock waiters that the contract suites write and read back."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from orchestrator import machine
from orchestrator.locks import LockWaiter
from orchestrator.machine import ReplyReceived
from orchestrator.messages import OutboxMessage, Reply
from orchestrator.state import SagaState
from sagas import order

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ORDER = {
    "order_id": "o-1",
    "customer_id": "c-1",
    "amount": "12.50",
    "items": [{"sku": "SKU-Ä", "qty": 2}],
}
# Long enough for a slow CI machine, short enough that a deadlock fails the test quickly.
PATIENCE = 10.0
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def started(key: str = "order-1", *, at: datetime = NOW, name: str | None = None) -> SagaState:
    """A saga just started: its first step dispatched, due to time out 30 s after `at`."""
    state = machine.start(order.order_v2, saga_id=uuid4(), key=key, input=ORDER, now=at).state
    return state if name is None else replace(state, name=name)


def first_step_succeeded(state: SagaState, at: datetime = NOW + timedelta(seconds=1)) -> SagaState:
    """The next revision: step 0 succeeded (with a result), step 1 dispatched."""
    step = state.steps[0]
    assert step.command_id is not None
    reply = Reply(
        command_id=step.command_id,
        saga_id=state.saga_id,
        step=step.name,
        outcome="success",
        result={"reservation": "r-1", "amounts": [1, 2.5], "note": None},
    )
    decided = machine.decide(order.order_v2, state, ReplyReceived(reply), at).state
    return replace(decided, revision=state.revision + 1)


def timers_moved(state: SagaState, to: datetime) -> SagaState:
    """The next revision with every timer moved to `to`, as handling a timeout would."""
    steps = tuple(replace(s, due_at=to) if s.due_at is not None else s for s in state.steps)
    return replace(state, steps=steps, revision=state.revision + 1)


def lock_owner(state: SagaState) -> dict[str, Any]:
    """acquire_locks' keyword arguments for `state`."""
    return {"saga_id": state.saga_id, "saga": state.name, "key": state.key, "now": NOW}


def waiter(
    key: str,
    *resources: str,
    saga: str = "order",
    version: int = 1,
    expires_at: datetime | None = None,
) -> LockWaiter:
    return LockWaiter(
        saga=saga,
        version=version,
        key=key,
        input={"order_id": key, "lines": [1, 2.5]},
        resources=resources,
        enqueued_at=NOW,
        expires_at=expires_at,
    )


def message(n: int) -> OutboxMessage:
    return OutboxMessage(
        exchange="saga.commands",
        routing_key="payments.charge",
        body=b'{"n": %d}' % n,
        message_id=f"m-{n}",
        reply_to="saga.replies" if n % 2 else None,
        # A saga's trace context travels as headers; most messages have none.
        headers={"traceparent": TRACEPARENT} if n == 2 else None,
    )
