"""The order saga through the pure state machine, one readable story per path.

reserve_credit -> reserve_stock -> charge_payment (pivot) -> notify_customer.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from orchestrator.machine import (
    Decision,
    ReplyReceived,
    TimersDue,
    decide,
    idempotency_key,
)
from orchestrator.messages import Reply, ReplyError
from orchestrator.state import SagaState, SagaStatus, StepStatus
from orchestrator.testing import SAGA_ID
from sagas.order import order_v1 as order_saga  # sequential: these tests follow it step by step
from tests.unit import builders
from tests.unit.builders import T0, reply

ORDER = {
    "order_id": "o-42",
    "customer_id": "c-7",
    "amount": "99.90",
    "items": [{"sku": "BOOK-1", "qty": 1}],
}
STEPS = ["reserve_credit", "reserve_stock", "charge_payment", "notify_customer"]


class Run(builders.Run):
    """Drives one order saga: a clock, the current state, and everything decided so far."""

    def __init__(self, cancel_reason: str | None = None) -> None:
        super().__init__(order_saga, ORDER, key="order-42", cancel_reason=cancel_reason)

    @property
    def sent(self) -> list[tuple[str, str]]:
        """(kind, command name) of every command, in dispatch order."""
        return [(c.kind, c.command) for c in self.commands]

    @property
    def outcomes(self) -> list[str]:
        """Routing keys of the outcome events, e.g. "order.completed"."""
        return [e.routing_key for d in self.decisions for e in d.events]

    def cancel(self, reason: str = "customer changed their mind") -> Decision:
        return super().cancel(reason)


def succeed_through(run: Run, last_step: str) -> None:
    """Answer every action up to and including `last_step` with success."""
    for name in STEPS[: STEPS.index(last_step) + 1]:
        assert run.last.step == name and run.last.kind == "action"
        run.succeed()


def step_statuses(state: SagaState) -> dict[str, StepStatus]:
    return {s.name: s.status for s in state.steps}


# -- the happy path -------------------------------------------------------------------------------


def test_happy_path_runs_every_step_in_order_and_completes() -> None:
    run = Run()
    for name in STEPS:
        assert run.status() == SagaStatus.RUNNING
        run.succeed(result={"step": name})

    assert run.sent == [
        ("action", "customers.reserve_credit"),
        ("action", "inventory.reserve"),
        ("action", "payments.charge"),
        ("action", "notifications.order_confirmed"),
    ]
    assert run.status() == SagaStatus.COMPLETED
    assert set(step_statuses(run.state).values()) == {StepStatus.SUCCEEDED}
    assert run.outcomes == ["order.completed"]
    completed = run.decisions[-1].events[0]
    assert completed.result == {name: {"step": name} for name in STEPS}
    for cmd in run.commands:
        assert cmd.saga_id == SAGA_ID and cmd.saga == "order" and cmd.attempt == 1
        assert cmd.payload == ORDER
        assert cmd.idempotency_key == f"{SAGA_ID}:{cmd.step}:action"
        assert cmd.expires_at == T0 + timedelta(seconds=30)
    assert [e for e, _ in run.history].count("step_succeeded") == 4


def test_start_dispatches_the_first_step_only() -> None:
    run = Run()
    assert run.sent == [("action", "customers.reserve_credit")]
    assert run.history == [("saga_started", None), ("step_dispatched", "reserve_credit")]
    assert run.step("reserve_credit").status == StepStatus.RUNNING
    assert run.state.next_due_at == T0 + timedelta(seconds=30)


# -- failures and compensation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failing", "undone"),
    [
        ("reserve_credit", []),
        ("reserve_stock", ["customers.release_credit"]),
        ("charge_payment", ["inventory.release", "customers.release_credit"]),
    ],
)
def test_failure_at_each_step_compensates_exactly_the_earlier_steps_in_reverse(
    failing: str, undone: list[str]
) -> None:
    run = Run()
    for _ in STEPS[: STEPS.index(failing)]:
        run.succeed()
    run.fail("no can do", retryable=False)
    assert run.status() == (SagaStatus.COMPENSATING if undone else SagaStatus.COMPENSATED)
    for _ in undone:
        run.succeed()

    assert [name for kind, name in run.sent if kind == "compensation"] == undone
    assert run.status() == SagaStatus.COMPENSATED
    assert run.state.error == {"type": "step_failed", "step": failing, "message": "no can do"}
    assert run.outcomes == ["order.compensated"]
    statuses = step_statuses(run.state)
    assert statuses[failing] == StepStatus.FAILED
    assert statuses["notify_customer"] == StepStatus.PENDING  # never dispatched
    for name in STEPS[: STEPS.index(failing)]:
        assert statuses[name] == StepStatus.COMPENSATED


def test_payment_declined_is_not_retried_and_undoes_the_reservations() -> None:
    run = Run()
    succeed_through(run, "reserve_stock")
    run.fail("card declined", retryable=False)

    assert [c.attempt for c in run.commands if c.step == "charge_payment"] == [1]
    assert run.sent[-1] == ("compensation", "inventory.release")
    compensation = run.last
    assert compensation.idempotency_key == f"{SAGA_ID}:reserve_stock:compensation"
    assert compensation.kind == "compensation" and compensation.attempt == 1
    run.succeed()
    assert run.sent[-1] == ("compensation", "customers.release_credit")
    run.succeed()

    assert run.status() == SagaStatus.COMPENSATED
    assert run.state.error is not None and run.state.error["message"] == "card declined"
    assert run.decisions[-1].events[0].error == run.state.error


def test_retryable_failure_before_the_pivot_is_retried_before_compensating() -> None:
    run = Run()
    succeed_through(run, "reserve_stock")
    run.fail("gateway busy")  # retryable: attempt 2 after a backoff
    assert run.status() == SagaStatus.RUNNING
    assert run.history[-1] == ("step_retry_scheduled", "charge_payment")
    for attempt in (2, 3):
        run.at(run.due_at("charge_payment"))
        assert (run.last.step, run.last.attempt) == ("charge_payment", attempt)
        run.fail("gateway busy")
    # Three attempts (the policy's max_attempts) failed: now the reservations are undone.
    assert run.status() == SagaStatus.COMPENSATING
    assert run.sent[-1] == ("compensation", "inventory.release")


def test_a_timed_out_step_is_compensated_because_it_may_have_acted() -> None:
    run = Run()
    succeed_through(run, "reserve_credit")  # reserve_stock is in flight
    for _ in range(3):  # the default policy allows 3 attempts
        run.at(run.due_at("reserve_stock"))  # timeout
        if run.status() == SagaStatus.RUNNING:
            run.at(run.due_at("reserve_stock"))  # retry wait over: next attempt
    assert [e for e, s in run.history if s == "reserve_stock"].count("step_timed_out") == 3
    assert run.step("reserve_stock").outcome_uncertain
    assert run.sent[-1] == ("compensation", "inventory.release")
    run.succeed()
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert run.state.error is not None and "no reply within 30s" in run.state.error["message"]


# -- timeouts and retries -------------------------------------------------------------------------


def test_timeout_schedules_a_retry_with_backoff_then_a_new_attempt_with_the_same_key() -> None:
    run = Run()
    first = run.last
    assert run.later(29.999).commands == ()  # not due yet: nothing happens
    assert run.step("reserve_credit").command_id == first.command_id

    timed_out = run.at(T0 + timedelta(seconds=30))
    assert [h.event for h in timed_out.history] == ["step_timed_out", "step_retry_scheduled"]
    assert timed_out.commands == ()
    waiting = run.step("reserve_credit")
    assert waiting.status == StepStatus.RUNNING and waiting.command_id is None
    assert waiting.error is not None and waiting.error["type"] == "timeout"
    # Default Retry: 1 s before the second attempt, +-20 % jitter.
    assert waiting.due_at is not None
    backoff = waiting.due_at - run.now
    assert timedelta(seconds=0.8) <= backoff <= timedelta(seconds=1.2)
    assert run.state.next_due_at == waiting.due_at

    assert run.at(waiting.due_at - timedelta(milliseconds=1)).commands == ()
    retried = run.at(waiting.due_at)
    (second,) = retried.commands
    assert second.attempt == 2 and second.step == "reserve_credit"
    assert second.command_id != first.command_id
    assert second.idempotency_key == first.idempotency_key
    assert second.expires_at == waiting.due_at + timedelta(seconds=30)
    assert run.step("reserve_credit").command_id == second.command_id

    # The first attempt's failure arrives late: recorded, not applied.
    before = run.state
    late = run.fail("too late", command=first)
    assert late.state.steps == before.steps
    assert [(h.event, (h.detail or {}).get("reason")) for h in late.history] == [
        ("reply_ignored", "stale attempt")
    ]
    # Its success is the step's all the same: every attempt shares the idempotency key, so
    # the participant answers the second attempt with it too (which is then late).
    won = run.succeed(command=first)
    first_entry = won.history[0]
    assert first_entry.event == "step_succeeded"
    assert (first_entry.detail or {}).get("answered_by_attempt") == 1
    assert run.step("reserve_credit").status == StepStatus.SUCCEEDED
    assert run.last.step == "reserve_stock"
    after = run.succeed(command=second)
    assert [(h.event, (h.detail or {}).get("reason")) for h in after.history] == [
        ("reply_ignored", "late")
    ]


def test_backoff_grows_between_attempts() -> None:
    run = Run()
    succeed_through(run, "charge_payment")  # notify_customer: 20 attempts, 1 s growing to 30 s
    waits = []
    for _ in range(6):
        run.fail("smtp down")
        due = run.due_at("notify_customer")
        waits.append((due - run.now).total_seconds())
        run.at(due)
    # 1, 2, 4, 8, 16, 30 (capped) seconds, each within +-20 % jitter.
    for wait, base in zip(waits, [1, 2, 4, 8, 16, 30], strict=True):
        assert base * 0.8 <= wait <= base * 1.2


def test_heartbeats_never_extend_the_timeout() -> None:
    run = Run()
    run.now = T0 + timedelta(seconds=20)
    beat = run.heartbeat()
    assert beat.commands == () and beat.events == ()
    assert run.step("reserve_credit").due_at == T0 + timedelta(seconds=30)

    run.now = T0 + timedelta(seconds=29)
    run.heartbeat()  # alive, but a hung handler heartbeats too: the limit holds
    timed_out = run.at(T0 + timedelta(seconds=30))
    assert timed_out.history[0].event == "step_timed_out"
    assert run.detail("step_timed_out") == {"attempt": 1, "timeout": "start_to_close"}


def test_heartbeat_for_an_old_attempt_changes_nothing() -> None:
    run = Run()
    first = run.last
    run.fail("flaky")
    run.at(run.due_at("reserve_credit"))
    before = run.state
    stale = run.feed(ReplyReceived(reply(first, "heartbeat")))
    assert stale.state == before


# -- duplicates -----------------------------------------------------------------------------------


def test_duplicate_reply_is_recorded_and_ignored() -> None:
    run = Run()
    cmd = run.last
    run.succeed(command=cmd)
    before = run.state
    again = run.succeed(command=cmd, result={"different": True})
    assert again.state.steps == before.steps
    assert again.commands == () and again.events == ()
    assert [(h.event, h.step, (h.detail or {}).get("reason")) for h in again.history] == [
        ("reply_ignored", "reserve_credit", "duplicate")
    ]
    assert run.step("reserve_credit").result == {"done": "reserve_credit"}


def test_reply_for_an_unknown_step_is_ignored() -> None:
    run = Run()
    before = run.state
    stray = Reply(command_id=uuid.uuid4(), saga_id=SAGA_ID, step="ship", outcome="success")
    decision = run.feed(ReplyReceived(stray))
    assert decision.state.steps == before.steps
    assert [(h.event, (h.detail or {}).get("reason")) for h in decision.history] == [
        ("reply_ignored", "unknown step")
    ]


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel_with_a_step_in_flight_waits_for_it_and_undoes_it_when_it_succeeds() -> None:
    run = Run()
    succeed_through(run, "reserve_credit")
    in_flight = run.last
    assert in_flight.step == "reserve_stock"

    accepted = run.cancel("customer changed their mind")
    assert accepted.commands == ()
    assert run.status() == SagaStatus.COMPENSATING
    assert [h.event for h in accepted.history] == ["saga_cancel_accepted"]

    run.succeed(command=in_flight)  # the reservation went through after all
    assert run.sent[-1] == ("compensation", "inventory.release")
    run.succeed()
    assert run.sent[-1] == ("compensation", "customers.release_credit")
    run.succeed()

    assert run.status() == SagaStatus.CANCELLED
    assert run.state.error == {"type": "cancelled", "message": "customer changed their mind"}
    assert run.outcomes == ["order.cancelled"]
    assert ("action", "payments.charge") not in run.sent


def test_cancel_with_a_step_in_flight_that_then_fails_for_good_does_not_undo_it() -> None:
    run = Run()
    succeed_through(run, "reserve_credit")
    run.cancel()
    run.fail("out of stock", retryable=False)  # final: the participant stored it
    assert run.step("reserve_stock").status == StepStatus.FAILED
    assert run.sent[-1] == ("compensation", "customers.release_credit")
    run.succeed()
    assert run.status() == SagaStatus.CANCELLED
    assert ("compensation", "inventory.release") not in run.sent
    assert [c.attempt for c in run.commands if c.step == "reserve_stock"] == [1]


def test_cancel_with_a_step_in_flight_that_then_fails_retryably_undoes_it_to_be_sure() -> None:
    # A retryable failure speaks for one delivery: another copy of the command may have acted
    # (or still act), so the step is undone; a participant that never acted answers the undo
    # as a null compensation, and its barrier then refuses any late copy.
    run = Run()
    succeed_through(run, "reserve_credit")
    run.cancel()
    run.fail("database restarting", retryable=True)  # no retry once cancelled
    assert run.sent[-1] == ("compensation", "inventory.release")
    run.succeed({"null_compensation": True})
    assert run.sent[-1] == ("compensation", "customers.release_credit")
    run.succeed()
    assert run.status() == SagaStatus.CANCELLED
    assert [
        c.attempt for c in run.commands if c.step == "reserve_stock" and c.kind == "action"
    ] == [1]


def test_cancel_while_waiting_to_retry_stops_the_retry_and_undoes_the_attempt() -> None:
    run = Run()
    run.fail("busy")
    run.cancel()
    assert run.sent[-1] == ("compensation", "customers.release_credit")
    run.succeed({"null_compensation": True})
    assert run.status() == SagaStatus.CANCELLED
    assert run.state.next_due_at is None
    run.later(3600)
    assert [c.attempt for c in run.commands if c.kind == "action"] == [1]


def test_cancel_before_start_ends_cancelled_without_any_command() -> None:
    run = Run(cancel_reason="cancelled before it started")
    assert run.commands == []
    assert run.status() == SagaStatus.CANCELLED
    assert set(step_statuses(run.state).values()) == {StepStatus.PENDING}
    assert [e for e, _ in run.history] == ["saga_started", "saga_cancel_accepted", "saga_cancelled"]
    assert run.outcomes == ["order.cancelled"]
    assert run.decisions[0].events[0].error == {
        "type": "cancelled",
        "message": "cancelled before it started",
    }


def test_cancel_after_the_pivot_was_dispatched_is_refused() -> None:
    run = Run()
    succeed_through(run, "reserve_stock")  # charge_payment is in flight
    before = run.state
    refused = run.cancel("too late")
    assert refused.state.status == SagaStatus.RUNNING and refused.state.steps == before.steps
    assert refused.commands == ()
    assert [h.event for h in refused.history] == ["cancel_refused"]
    (event,) = refused.events
    assert event.routing_key == "order.cancel_refused"
    assert event.error is not None and "charge_payment" in event.error["message"]
    run.succeed()
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED


def test_cancel_of_a_finished_saga_is_refused() -> None:
    run = Run()
    succeed_through(run, "notify_customer")
    refused = run.cancel()
    assert [h.event for h in refused.history] == ["cancel_refused"]
    assert refused.events[0].error == {
        "type": "cancel_refused",
        "message": "the saga is already completed",
    }


def test_cancel_while_compensating_is_ignored() -> None:
    run = Run()
    succeed_through(run, "reserve_credit")
    run.fail("out of stock", retryable=False)
    ignored = run.cancel()
    assert [h.event for h in ignored.history] == ["cancel_ignored"]
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED  # a failure, not a cancel


# -- parking --------------------------------------------------------------------------------------


def test_compensation_failing_until_exhausted_parks_the_saga_as_failed() -> None:
    run = Run()
    succeed_through(run, "reserve_credit")
    run.fail("out of stock", retryable=False)
    release = run.last
    assert release.command == "customers.release_credit"

    attempts = order_saga.step("reserve_credit").compensation_retry.max_attempts
    assert attempts is not None
    for attempt in range(1, attempts + 1):
        assert (run.last.kind, run.last.attempt) == ("compensation", attempt)
        assert run.last.idempotency_key == release.idempotency_key
        run.fail("credit service says no")
        if attempt < attempts:
            assert run.status() == SagaStatus.COMPENSATING
            run.at(run.due_at("reserve_credit"))

    assert run.status() == SagaStatus.FAILED
    assert run.state.error == {
        "type": "compensation_failed",
        "step": "reserve_credit",
        "message": f"compensation failed after {attempts} attempt(s): credit service says no",
        # Why it was compensating, kept for when an operator gets it going again.
        "cause": {"type": "step_failed", "step": "reserve_stock", "message": "out of stock"},
    }
    parked = run.step("reserve_credit")
    assert parked.status == StepStatus.COMPENSATING and not parked.in_flight
    assert run.state.next_due_at is None
    assert run.outcomes == ["order.failed"]
    assert run.later(3600).commands == ()  # parked: nothing more on its own


def test_non_retryable_compensation_failure_parks_at_once() -> None:
    run = Run()
    succeed_through(run, "reserve_stock")
    run.fail("card declined", retryable=False)
    run.fail("stock ledger closed", retryable=False)
    assert run.status() == SagaStatus.FAILED
    assert run.state.error is not None and run.state.error["step"] == "reserve_stock"
    assert ("compensation", "customers.release_credit") not in run.sent


def test_failure_after_the_pivot_is_never_compensated_and_parks_the_saga() -> None:
    run = Run()
    succeed_through(run, "charge_payment")
    run.fail("address unknown", retryable=False)
    assert run.status() == SagaStatus.FAILED
    # Not retryable: it failed for good rather than running out of retries.
    assert run.state.error == {
        "type": "step_failed",
        "step": "notify_customer",
        "message": "address unknown",
    }
    assert all(kind == "action" for kind, _ in run.sent)
    assert run.outcomes == ["order.failed"]
    statuses = step_statuses(run.state)
    assert statuses["charge_payment"] == StepStatus.SUCCEEDED
    assert statuses["notify_customer"] == StepStatus.FAILED


def test_decide_is_deterministic() -> None:
    run = Run()
    failure = ReplyReceived(
        reply(run.last, "failure", error=ReplyError(message="busy", retryable=True))
    )
    assert decide(order_saga, run.state, failure, T0) == decide(order_saga, run.state, failure, T0)
    run.feed(failure)
    event = TimersDue()
    later = run.due_at("reserve_credit")
    assert decide(order_saga, run.state, event, later) == decide(
        order_saga, run.state, event, later
    )
    first = decide(order_saga, run.state, event, later).commands[0]
    assert first.command_id == decide(order_saga, run.state, event, later).commands[0].command_id
    assert idempotency_key(SAGA_ID, "reserve_credit", "action") == first.idempotency_key


def test_definition_and_state_must_match() -> None:
    run = Run()
    from orchestrator.definition import Saga
    from sagas.order import OrderPlaced

    other = Saga("order", version=2, input=OrderPlaced)
    other.remote("x", command="svc.x", compensation=None)
    with pytest.raises(ValueError, match="does not match"):
        decide(other, run.state, TimersDue(), T0)
