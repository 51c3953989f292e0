"""Saga deadlines: `deadline` bounds the steps (compensate before the pivot was dispatched,
park after), `compensation_deadline` bounds the undoing (park for an operator)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.definition import Saga
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, T0, Run, events, shop, three_steps

DEADLINE = 25.0  # the steps' timeout is 10 s


def two_reservations(**options: object) -> Saga:
    """reserve_a, reserve_b (both compensatable) -> charge (pivot) -> notify."""
    s = shop(deadline=DEADLINE, **options)
    s.remote("reserve_a", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.remote(
        "reserve_b",
        command="credit.reserve",
        compensation="credit.release",
        retry=Retry(max_attempts=5, initial_interval=4, jitter=0),
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote(
        "notify",
        command="mail.send",
        retry=Retry(max_attempts=5, initial_interval=1, multiplier=1, max_interval=1, jitter=0),
    )
    return s


def at_deadline(run: Run) -> None:
    run.at(T0 + timedelta(seconds=DEADLINE))


def deadline_error(run: Run) -> dict[str, object]:
    assert run.state.error is not None
    return run.state.error


# -- the deadline is a timer ----------------------------------------------------------------------


def test_the_deadline_is_set_at_start_and_is_the_next_timer_when_it_comes_first() -> None:
    run = Run(shop(deadline=5))  # no steps needed to see the timer
    assert run.state.deadline_at == T0 + timedelta(seconds=5)
    run = Run(two_reservations())
    assert run.state.deadline_at == T0 + timedelta(seconds=DEADLINE)
    assert run.state.next_due_at == T0 + timedelta(seconds=10)  # the step's timeout first
    run.now = T0 + timedelta(seconds=20)
    run.succeed()  # reserve_b dispatched at 20 s, timing out at 30 s
    assert run.state.next_due_at == T0 + timedelta(seconds=DEADLINE)


def test_without_a_deadline_there_is_no_deadline_timer() -> None:
    run = Run(three_steps())
    assert run.state.deadline_at is None
    assert run.state.next_due_at == T0 + timedelta(seconds=10)


def test_a_saga_that_finishes_in_time_ignores_its_deadline() -> None:
    run = Run(two_reservations())
    for _ in range(4):
        run.succeed()
    assert run.status() == SagaStatus.COMPLETED and run.state.next_due_at is None
    assert run.later(3600).history == ()


# -- before the pivot: compensate -----------------------------------------------------------------


def test_deadline_before_the_pivot_cuts_off_the_step_in_flight_and_undoes_it() -> None:
    s = shop(deadline=DEADLINE)
    s.remote("reserve_a", command="stock.reserve", compensation="stock.release", retry=ONCE)
    # A long step, heartbeating every 8 s: alive past the saga's deadline.
    s.remote(
        "reserve_b",
        command="credit.reserve",
        compensation="credit.release",
        timeout=3600,
        heartbeat_timeout=10,
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.succeed()  # reserve_a done
    in_flight = run.last
    assert in_flight.step == "reserve_b"
    for second in (8, 16):
        run.now = T0 + timedelta(seconds=second)
        run.heartbeat()
    assert run.later(DEADLINE - 16 - 0.001).history == ()

    passed = run.at(T0 + timedelta(seconds=DEADLINE))
    assert events(passed) == [
        "saga_deadline_exceeded",
        "step_failed",
        "saga_compensating",
        "compensation_dispatched",
    ]
    assert run.status() == SagaStatus.COMPENSATING
    assert deadline_error(run)["type"] == "deadline_exceeded"
    assert run.detail("saga_deadline_exceeded") == {
        "deadline_at": (T0 + timedelta(seconds=DEADLINE)).isoformat()
    }
    # Cut off as timed out: it may have acted, so it is undone first, without waiting.
    cut = run.step("reserve_b")
    assert cut.outcome_uncertain and cut.error is not None
    assert (cut.error["timeout"], cut.error["message"]) == (
        "deadline",
        deadline_error(run)["message"],
    )
    assert run.sent[-1] == ("compensation", "reserve_b")

    late = run.succeed(command=in_flight)  # the cut-off attempt answers after all
    assert events(late) == ["reply_ignored"] and late.commands == ()
    assert late.state.steps == passed.state.steps

    run.succeed()
    assert run.sent[-1] == ("compensation", "reserve_a")
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert deadline_error(run)["type"] == "deadline_exceeded"
    assert run.outcomes == ["compensated"]
    assert ("action", "charge") not in run.sent


def test_a_cut_off_step_without_a_compensation_is_not_undone() -> None:
    s = shop(deadline=DEADLINE)
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.remote("check", command="fraud.check", timeout=60, retry=ONCE, compensation=None)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.succeed()
    checking = run.last
    passed = run.at(T0 + timedelta(seconds=DEADLINE))
    assert [(c.kind, c.step) for c in passed.commands] == [("compensation", "reserve")]
    assert run.step("check").status == StepStatus.FAILED and not run.step("check").in_flight
    run.fail("late answer", command=checking)  # ignored: the step was cut off
    assert run.step("check").status == StepStatus.FAILED
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert [c.step for c in run.commands if c.kind == "compensation"] == ["reserve"]


def test_deadline_during_a_retry_wait_stops_the_retry() -> None:
    run = Run(two_reservations())
    run.succeed()
    run.now = T0 + timedelta(seconds=DEADLINE - 1)
    run.fail("credit service busy")  # retry due 4 s later, after the deadline
    assert run.step("reserve_b").due_at == T0 + timedelta(seconds=DEADLINE + 3)

    passed = run.at(T0 + timedelta(seconds=DEADLINE))
    # The failed attempt is undone too: a retryable failure is not proof nothing happened.
    assert [(c.kind, c.step) for c in passed.commands] == [("compensation", "reserve_b")]
    assert run.step("reserve_b").status == StepStatus.COMPENSATING  # the retry is off
    run.succeed({"null_compensation": True})
    assert run.last.kind == "compensation" and run.last.step == "reserve_a"
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert run.later(3600).commands == ()
    assert [c.attempt for c in run.commands if c.step == "reserve_b" and c.kind == "action"] == [1]


def test_deadline_during_a_second_attempt_after_a_timeout_undoes_the_step() -> None:
    run = Run(two_reservations())
    run.now = T0 + timedelta(seconds=5)
    run.succeed()  # reserve_b dispatched at 5 s, times out at 15 s
    run.at(T0 + timedelta(seconds=15))
    second = run.at(T0 + timedelta(seconds=19)).commands[0]  # attempt 2, until 29 s
    assert second.attempt == 2
    passed = run.at(T0 + timedelta(seconds=DEADLINE))
    assert passed.commands[0].kind == "compensation"
    assert passed.commands[0].step == "reserve_b"
    assert run.detail("step_failed", "reserve_b")["attempt"] == 2


# -- past the pivot: park -------------------------------------------------------------------------


def test_deadline_once_the_pivot_was_dispatched_parks_the_saga() -> None:
    run = Run(two_reservations())
    run.succeed()
    run.succeed()
    pivot = run.last
    assert pivot.step == "charge"

    parked = run.at(T0 + timedelta(seconds=DEADLINE))
    assert events(parked) == ["saga_deadline_exceeded", "saga_failed"]
    assert parked.commands == ()
    assert run.status() == SagaStatus.FAILED
    error = deadline_error(run)
    assert error["type"] == "deadline_exceeded"
    assert "past its pivot" in str(error["message"])
    assert run.outcomes == ["failed"]
    assert run.state.next_due_at is None
    charge = run.step("charge")
    assert charge.status == StepStatus.RUNNING and not charge.in_flight
    assert run.statuses()["reserve_a"] == StepStatus.SUCCEEDED  # nothing undone

    late = run.succeed(command=pivot)  # the charge's answer comes in after all
    assert events(late) == ["reply_ignored"]
    assert late.state.steps == parked.state.steps and late.state.status == SagaStatus.FAILED
    assert late.commands == ()


def test_a_saga_parked_by_its_deadline_is_retried_with_a_fresh_deadline() -> None:
    run = Run(two_reservations())
    run.succeed()
    run.succeed()
    run.at(T0 + timedelta(seconds=DEADLINE))
    run.later(100)
    retried = run.retry()
    (again,) = retried.commands
    assert (again.step, again.attempt) == ("charge", 2)
    assert run.status() == SagaStatus.RUNNING
    assert run.state.deadline_at == run.now + timedelta(seconds=DEADLINE)
    run.succeed()
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED


def test_deadline_during_a_retry_wait_past_the_pivot_parks_the_step_for_a_skip() -> None:
    run = Run(two_reservations())
    for _ in range(3):
        run.succeed()  # notify in flight
    run.now = T0 + timedelta(seconds=DEADLINE - 1)
    run.fail("smtp down")  # retry wait of notify, due after the deadline
    at_deadline(run)
    assert run.status() == SagaStatus.FAILED
    notify = run.step("notify")
    assert notify.due_at is None and not notify.in_flight  # the retry wait ended

    skipped = run.skip("notify", result={"sent": "by hand"})
    assert skipped.refused is None
    assert run.status() == SagaStatus.COMPLETED
    assert run.decisions[-1].events[0].result == {
        "reserve_a": {"done": "reserve_a"},
        "reserve_b": {"done": "reserve_b"},
        "charge": {"done": "charge"},
        "notify": {"sent": "by hand"},
    }


def test_a_retry_after_a_deadline_in_a_retry_wait_sends_the_step_at_once() -> None:
    run = Run(two_reservations())
    for _ in range(3):
        run.succeed()
    for _ in range(3):  # three of five attempts of notify spent
        run.fail("smtp down")
        run.when_due()
    run.fail("smtp down")
    run.at(max(T0 + timedelta(seconds=DEADLINE), run.now))
    assert run.status() == SagaStatus.FAILED
    (again,) = run.retry().commands
    assert (again.step, again.attempt) == ("notify", 5)
    assert run.step("notify").retry_base == 4
    # The budget is fresh: five more attempts, not the one left.
    for _ in range(4):
        run.fail("smtp down")
        assert run.status() == SagaStatus.RUNNING
        run.when_due()
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED


# -- compensation deadline ------------------------------------------------------------------------


def slow_undo() -> Saga:
    s = shop(compensation_deadline=30)
    s.remote(
        "reserve",
        command="stock.reserve",
        compensation="stock.release",
        retry=ONCE,
        compensation_retry=Retry(max_attempts=None, initial_interval=5, jitter=0),
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    return s


def test_compensation_not_finished_by_its_deadline_parks_the_saga() -> None:
    run = Run(slow_undo())
    run.succeed()
    run.now = T0 + timedelta(seconds=2)
    run.fail("card declined", retryable=False)  # compensation starts at 2 s
    assert run.state.compensation_deadline_at == T0 + timedelta(seconds=32)
    assert run.state.next_due_at == T0 + timedelta(seconds=12)  # the release's timeout

    while run.status() == SagaStatus.COMPENSATING:
        assert run.now < T0 + timedelta(seconds=32)
        run.fail("stock ledger locked")  # retried forever...
        run.when_due()
    # ...but not past the compensation deadline.
    assert run.now == T0 + timedelta(seconds=32)
    assert run.status() == SagaStatus.FAILED
    assert deadline_error(run)["type"] == "compensation_deadline_exceeded"
    assert events(run.decisions[-1]) == ["compensation_deadline_exceeded", "saga_failed"]
    reserve = run.step("reserve")
    assert reserve.status == StepStatus.COMPENSATING and not reserve.in_flight
    assert reserve.due_at is None and run.state.next_due_at is None
    assert run.outcomes == ["failed"]
    assert run.later(3600).commands == ()


def test_a_late_compensation_reply_after_its_deadline_is_ignored() -> None:
    run = Run(slow_undo())
    run.succeed()
    run.fail("declined", retryable=False)
    release = run.last
    run.now = T0 + timedelta(seconds=9)
    run.heartbeat()  # the release runs long
    run.at(T0 + timedelta(seconds=30))
    assert run.status() == SagaStatus.FAILED
    late = run.succeed(command=release)
    assert events(late) == ["reply_ignored"]
    assert run.step("reserve").status == StepStatus.COMPENSATING


def test_the_steps_deadline_does_not_apply_while_compensating() -> None:
    s = shop(deadline=15)
    s.remote(
        "reserve",
        command="stock.reserve",
        compensation="stock.release",
        retry=ONCE,
        compensation_timeout=100,
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.succeed()
    run.fail("declined", retryable=False)
    assert run.status() == SagaStatus.COMPENSATING
    assert run.state.next_due_at == T0 + timedelta(seconds=100)
    assert run.at(T0 + timedelta(seconds=50)).history == ()
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert deadline_error(run)["type"] == "step_failed"
