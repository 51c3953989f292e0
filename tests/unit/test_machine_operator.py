"""Operator actions as events of the pure machine: pause/resume, retry with a fresh budget,
skip with a result, mark-compensated; and their refusals, which change nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from orchestrator.definition import Saga
from orchestrator.machine import Decision
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, T0, TWICE, Run, events, shop

UNDO = Retry(max_attempts=2, initial_interval=1, jitter=0)


def store() -> Saga:
    """reserve_a, reserve_b (compensatable; 2 compensation attempts) -> charge (pivot, 2
    attempts) -> notify (2 attempts) -> survey."""
    s = shop()
    for name, service in (("reserve_a", "stock"), ("reserve_b", "credit")):
        s.remote(
            name,
            command=f"{service}.reserve",
            compensation=f"{service}.release",
            retry=TWICE,
            compensation_retry=UNDO,
        )
    s.remote("charge", command="payments.charge", pivot=True, retry=TWICE)
    s.remote("notify", command="mail.send", retry=TWICE)
    s.remote("survey", command="mail.survey", retry=ONCE)
    return s


def assert_refused(decision: Decision, run: Run, *, why: str) -> None:
    assert decision.refused is not None and why in decision.refused, decision.refused
    assert decision.commands == () and decision.history == () and decision.events == ()
    assert decision.state is run.decisions[-2].state  # the very state it was given


def park_in_compensation(run: Run) -> None:
    """reserve_a and reserve_b done, charge declined, reserve_b's release fails twice."""
    run.succeed()
    run.succeed()
    run.fail("card declined", retryable=False)
    assert run.last == run.last_for("reserve_b") and run.last.kind == "compensation"
    run.fail("credit ledger locked")
    run.when_due()
    run.fail("credit ledger locked")
    assert run.status() == SagaStatus.FAILED
    assert run.state.error is not None and run.state.error["type"] == "compensation_failed"


def park_past_the_pivot(run: Run) -> None:
    """Up to the charge done; notify fails both of its attempts."""
    for _ in range(3):
        run.succeed()
    run.fail("smtp down")
    run.when_due()
    run.fail("smtp down")
    assert run.status() == SagaStatus.FAILED
    assert run.state.error is not None and run.state.error["type"] == "retries_exhausted"


# -- pause and resume -----------------------------------------------------------------------------


def test_pause_holds_the_timers_and_remembers_where_to_resume() -> None:
    run = Run(store())
    assert run.state.next_due_at is not None
    paused = run.pause("looks wrong")
    assert events(paused) == ["saga_paused"] and paused.commands == ()
    assert run.detail("saga_paused") == {"reason": "looks wrong"}
    assert run.status() == SagaStatus.PAUSED
    assert run.state.resume_status == SagaStatus.RUNNING
    assert run.state.next_due_at is None
    assert not run.state.finished


def test_a_reply_while_paused_is_applied_but_nothing_new_is_dispatched() -> None:
    run = Run(store())
    run.pause()
    applied = run.succeed({"held": 1})
    assert events(applied) == ["step_succeeded"] and applied.commands == ()
    assert run.step("reserve_a").status == StepStatus.SUCCEEDED
    assert run.step("reserve_a").result == {"held": 1}
    assert run.status() == SagaStatus.PAUSED

    resumed = run.resume("checked")
    assert events(resumed) == ["saga_resumed", "step_dispatched"]
    assert run.detail("saga_resumed") == {"reason": "checked"}
    assert [(c.kind, c.step) for c in resumed.commands] == [("action", "reserve_b")]
    assert run.status() == SagaStatus.RUNNING and run.state.resume_status is None


def test_timers_do_nothing_while_paused_and_fire_on_resume() -> None:
    run = Run(store())
    run.pause()
    before = run.state
    held = run.later(3600)  # reserve_a's 10 s timeout passed long ago
    assert held.history == () and held.commands == () and held.state == before

    resumed = run.resume()
    assert events(resumed) == ["saga_resumed", "step_timed_out", "step_retry_scheduled"]
    retried = run.when_due()
    assert [(c.step, c.attempt) for c in retried.commands] == [("reserve_a", 2)]


def test_a_retry_wait_that_came_due_while_paused_dispatches_on_resume() -> None:
    run = Run(store())
    run.fail("busy")
    run.pause()
    run.later(60)
    resumed = run.resume()
    assert [(c.step, c.attempt) for c in resumed.commands] == [("reserve_a", 2)]


def test_a_step_failing_for_good_while_paused_moves_the_resume_target_to_compensating() -> None:
    run = Run(store())
    run.succeed()
    run.pause()
    failed = run.fail("no credit", retryable=False)
    assert failed.commands == ()
    assert run.status() == SagaStatus.PAUSED
    assert run.state.resume_status == SagaStatus.COMPENSATING
    assert run.step("reserve_b").status == StepStatus.FAILED

    resumed = run.resume()
    assert [(c.kind, c.step) for c in resumed.commands] == [("compensation", "reserve_a")]
    assert run.status() == SagaStatus.COMPENSATING
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED


def test_a_step_failing_for_good_while_paused_past_the_pivot_parks_the_saga() -> None:
    run = Run(store())
    for _ in range(3):
        run.succeed()
    run.pause()
    run.fail("address unknown", retryable=False)
    assert run.status() == SagaStatus.FAILED
    assert run.state.error is not None and run.state.error["type"] == "step_failed"
    assert run.state.resume_status == SagaStatus.RUNNING
    assert run.outcomes == ["failed"]
    assert_refused(run.resume(), run, why="only a paused saga can be resumed")


def test_a_cancel_while_paused_is_accepted_and_compensates_on_resume() -> None:
    run = Run(store())
    run.succeed()
    in_flight = run.last  # reserve_b
    run.pause()
    accepted = run.cancel("customer left")
    assert events(accepted) == ["saga_cancel_accepted"] and accepted.commands == ()
    assert run.status() == SagaStatus.PAUSED
    assert run.state.resume_status == SagaStatus.COMPENSATING
    assert run.state.cancel_reason == "customer left"
    run.succeed(command=in_flight)  # reserve_b went through: still nothing sent
    assert run.sent[-1] == ("action", "reserve_b")

    resumed = run.resume()
    assert [(c.kind, c.step) for c in resumed.commands] == [("compensation", "reserve_b")]
    run.succeed()
    run.succeed()
    assert run.status() == SagaStatus.CANCELLED
    assert run.outcomes == ["cancelled"]


def test_a_cancel_while_paused_past_the_pivot_is_refused() -> None:
    run = Run(store())
    run.succeed()
    run.succeed()  # charge in flight
    run.pause()
    refused = run.cancel()
    assert events(refused) == ["cancel_refused"]
    assert run.status() == SagaStatus.PAUSED and run.state.resume_status == SagaStatus.RUNNING


def test_pause_while_compensating_resumes_compensating() -> None:
    run = Run(store())
    run.succeed()
    run.succeed()
    run.fail("declined", retryable=False)  # release of reserve_b in flight
    run.pause()
    assert run.state.resume_status == SagaStatus.COMPENSATING
    done = run.succeed()
    assert done.commands == () and run.step("reserve_b").status == StepStatus.COMPENSATED
    resumed = run.resume()
    assert [(c.kind, c.step) for c in resumed.commands] == [("compensation", "reserve_a")]


# -- retry ----------------------------------------------------------------------------------------


def test_retry_of_a_parked_compensation_gives_it_a_fresh_budget() -> None:
    run = Run(store())
    park_in_compensation(run)
    parked = run.step("reserve_b")
    assert parked.status == StepStatus.COMPENSATING and parked.compensation_attempt == 2
    old = run.last

    retried = run.retry("ledger unlocked")
    assert events(retried) == ["saga_retried", "compensation_dispatched"]
    assert run.detail("saga_retried") == {"reason": "ledger unlocked"}
    (again,) = retried.commands
    assert (again.kind, again.step, again.attempt) == ("compensation", "reserve_b", 3)
    assert again.command_id != old.command_id
    assert again.idempotency_key == old.idempotency_key
    assert run.status() == SagaStatus.COMPENSATING
    assert run.step("reserve_b").retry_base == 2

    # The policy's two attempts apply again: one more failure is retried, not parked.
    run.fail("still locked")
    assert run.status() == SagaStatus.COMPENSATING
    run.when_due()
    run.succeed()
    assert run.sent[-1] == ("compensation", "reserve_a")
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert run.outcomes == ["failed", "compensated"]
    # It ends with the reason it was compensating for, not the park it got past.
    assert run.state.error is not None and run.state.error["type"] == "step_failed"
    assert run.state.error["step"] == "charge"


def test_retry_of_a_cancel_parked_in_compensation_ends_cancelled() -> None:
    run = Run(store())
    run.succeed()
    run.cancel("customer left")  # reserve_b in flight: awaited
    run.fail("no credit", retryable=False)
    run.fail("stock ledger locked", retryable=False)  # release of reserve_a: parks
    assert run.status() == SagaStatus.FAILED
    run.retry()
    run.succeed()
    assert run.status() == SagaStatus.CANCELLED
    assert run.state.error == {"type": "cancelled", "message": "customer left"}


def test_retry_of_a_saga_parked_past_the_pivot_runs_the_step_again() -> None:
    run = Run(store())
    park_past_the_pivot(run)
    retried = run.retry()
    (again,) = retried.commands
    assert (again.kind, again.step, again.attempt) == ("action", "notify", 3)
    assert run.status() == SagaStatus.RUNNING
    assert run.step("notify").status == StepStatus.RUNNING
    assert run.step("notify").retry_base == 2
    run.fail("smtp flaky")  # a fresh budget: retried
    assert run.status() == SagaStatus.RUNNING
    run.when_due()
    run.succeed()
    run.succeed()  # survey
    assert run.status() == SagaStatus.COMPLETED
    assert run.state.error is None
    assert run.outcomes == ["failed", "completed"]


# -- skip -----------------------------------------------------------------------------------------


def test_skip_of_a_step_parked_past_the_pivot_completes_it_with_the_given_result() -> None:
    run = Run(store())
    park_past_the_pivot(run)
    skipped = run.skip("notify", result={"sent": "by phone"}, reason="called the customer")
    assert events(skipped) == ["step_skipped", "step_dispatched"]
    assert run.detail("step_skipped", "notify") == {
        "reason": "called the customer",
        "by": "operator",
        "result": {"sent": "by phone"},
    }
    assert [(c.kind, c.step) for c in skipped.commands] == [("action", "survey")]
    notify = run.step("notify")
    assert notify.status == StepStatus.SKIPPED and notify.result == {"sent": "by phone"}
    assert run.state.results()["notify"] == {"sent": "by phone"}

    run.succeed()
    assert run.status() == SagaStatus.COMPLETED
    completed = run.decisions[-1].events[0]
    assert completed.status == "completed"
    assert completed.result is not None and completed.result["notify"] == {"sent": "by phone"}
    assert set(completed.result) == {"reserve_a", "reserve_b", "charge", "notify", "survey"}


def test_skip_of_a_pending_step_of_a_paused_saga() -> None:
    run = Run(store())
    run.pause()
    skipped = run.skip("reserve_b", result={"held": 0})
    assert events(skipped) == ["step_skipped"] and skipped.commands == ()
    assert run.status() == SagaStatus.PAUSED
    run.succeed()  # reserve_a
    resumed = run.resume()
    assert [(c.kind, c.step) for c in resumed.commands] == [("action", "charge")]
    assert run.state.results()["reserve_b"] == {"held": 0}


@pytest.mark.parametrize(
    ("prepare", "step", "why"),
    [
        (lambda run: None, "reserve_a", "'reserve_a' is running and the saga running"),
        (lambda run: None, "reserve_b", "'reserve_b' is pending and the saga running"),
        (park_past_the_pivot, "charge", "'charge' is succeeded and the saga failed"),
        (park_in_compensation, "reserve_b", "only a step parked at or past the pivot"),
        (lambda run: run.pause(), "reserve_a", "'reserve_a' is running and the saga paused"),
    ],
)
def test_skip_is_refused_otherwise(prepare: Callable[[Run], object], step: str, why: str) -> None:
    run = Run(store())
    prepare(run)
    assert_refused(run.skip(step, result={"x": 1}), run, why=why)


def test_skip_of_an_unknown_step_names_the_steps() -> None:
    run = Run(store())
    park_past_the_pivot(run)
    assert_refused(
        run.skip("ship"),
        run,
        why="no step named 'ship'; steps: reserve_a, reserve_b, charge, notify, survey",
    )


# -- mark-compensated -----------------------------------------------------------------------------


def test_mark_compensated_carries_on_with_the_remaining_compensations() -> None:
    run = Run(store())
    park_in_compensation(run)
    marked = run.mark_compensated("released in the ledger by hand")
    assert events(marked) == ["step_marked_compensated", "compensation_dispatched"]
    assert run.detail("step_marked_compensated", "reserve_b") == {
        "note": "released in the ledger by hand"
    }
    assert run.step("reserve_b").status == StepStatus.COMPENSATED
    assert [(c.kind, c.step) for c in marked.commands] == [("compensation", "reserve_a")]
    assert run.status() == SagaStatus.COMPENSATING
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert [step for kind, step in run.sent if kind == "compensation"] == [
        "reserve_b",
        "reserve_b",
        "reserve_a",
    ]


def test_mark_compensated_of_the_last_compensation_finishes_the_saga() -> None:
    run = Run(store())
    run.succeed()
    run.fail("no credit", retryable=False)
    run.fail("stock ledger closed", retryable=False)  # release of reserve_a parks at once
    assert run.status() == SagaStatus.FAILED
    finished = run.mark_compensated()
    assert events(finished) == ["step_marked_compensated", "saga_compensated"]
    assert finished.commands == ()
    assert run.status() == SagaStatus.COMPENSATED


def test_mark_compensated_is_refused_past_the_pivot_and_when_nothing_is_parked() -> None:
    run = Run(store())
    park_past_the_pivot(run)
    assert_refused(run.mark_compensated(), run, why="not parked while compensating")
    running = Run(store())
    assert_refused(running.mark_compensated(), running, why="the saga is running")


# -- refusals -------------------------------------------------------------------------------------


def test_pause_of_a_finished_saga_is_refused() -> None:
    run = Run(store())
    for _ in range(5):
        run.succeed()
    assert run.status() == SagaStatus.COMPLETED
    assert_refused(run.pause(), run, why="it is completed")


def test_pause_of_a_paused_or_parked_saga_is_refused() -> None:
    run = Run(store())
    run.pause()
    assert_refused(run.pause(), run, why="it is paused")
    parked = Run(store())
    park_past_the_pivot(parked)
    assert_refused(parked.pause(), parked, why="it is failed")


def test_resume_of_a_saga_that_is_not_paused_is_refused() -> None:
    run = Run(store())
    assert_refused(run.resume(), run, why="only a paused saga can be resumed; it is running")


def test_retry_of_a_running_or_paused_saga_is_refused() -> None:
    run = Run(store())
    assert_refused(run.retry(), run, why="only a failed (parked) saga can be retried")
    run.pause()
    assert_refused(run.retry(), run, why="it is paused")


def test_a_refusal_leaves_the_saga_able_to_carry_on() -> None:
    run = Run(store())
    run.retry()
    run.now = T0 + timedelta(seconds=1)
    run.succeed()
    assert run.last.step == "reserve_b"
    assert run.state.updated_at == T0 + timedelta(seconds=1)
