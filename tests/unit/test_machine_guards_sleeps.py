"""Guards (a precondition checked just before a step is dispatched) and sleep steps (a durable
wait that sends nothing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.definition import GuardContext, Saga
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, T0, TWICE, Run, events, shop

# -- guards ---------------------------------------------------------------------------------------


def guarded(guard: Any, on_false: Any = "skip", *, pivot_first: bool = False) -> Saga:
    """reserve -> charge (pivot) -> notify, with `guard` on `gift_wrap`: before the pivot
    (default), or after it (`pivot_first`)."""
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    if pivot_first:
        s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote(
        "gift_wrap",
        command="wrapping.wrap",
        compensation=None if pivot_first else "wrapping.unwrap",
        guard=guard,
        on_guard_false=on_false,
        retry=ONCE,
    )
    if not pivot_first:
        s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote("notify", command="mail.send", retry=ONCE)
    return s


def test_a_true_guard_dispatches_the_step() -> None:
    run = Run(guarded(lambda ctx: True))
    run.succeed()
    assert run.last.step == "gift_wrap" and run.last.kind == "action"
    assert run.step("gift_wrap").status == StepStatus.RUNNING


def test_the_guard_sees_the_input_and_the_results_of_earlier_steps() -> None:
    seen: list[GuardContext] = []

    def guard(ctx: GuardContext) -> bool:
        seen.append(ctx)
        return bool(ctx.input["flag"]) and ctx.results["reserve"]["held"] == 2

    run = Run(guarded(guard), input={"n": 5, "flag": True})
    assert seen == []  # not checked before its step is reached
    run.succeed({"held": 2})
    (ctx,) = seen
    assert ctx.input == {"n": 5, "flag": True}
    assert ctx.results == {"reserve": {"held": 2}}
    assert (ctx.saga_id, ctx.key) == (str(run.state.saga_id), "k-1")
    assert run.last.step == "gift_wrap"


def test_a_false_guard_skips_the_step_and_dispatches_the_next_in_the_same_decision() -> None:
    run = Run(guarded(lambda ctx: ctx.input["flag"]), input={"n": 1, "flag": False})
    decision = run.succeed()
    assert events(decision) == ["step_succeeded", "step_skipped", "step_dispatched"]
    assert [(c.kind, c.step) for c in decision.commands] == [("action", "charge")]
    assert run.step("gift_wrap").status == StepStatus.SKIPPED
    assert run.detail("step_skipped", "gift_wrap") == {"reason": "guard is false"}
    run.succeed()
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED
    assert ("action", "gift_wrap") not in run.sent
    assert "gift_wrap" not in run.decisions[-1].events[0].result


def test_consecutive_skipped_steps_to_the_end_complete_the_saga() -> None:
    s = shop()
    s.remote("reserve", command="stock.reserve", retry=ONCE, compensation=None)
    s.remote("wrap", command="wrapping.wrap", guard=lambda ctx: False, compensation=None)
    s.remote("engrave", command="engraving.engrave", guard=lambda ctx: False, compensation=None)
    run = Run(s)
    done = run.succeed()
    assert events(done) == ["step_succeeded", "step_skipped", "step_skipped", "saga_completed"]
    assert run.status() == SagaStatus.COMPLETED and done.commands == ()


def test_a_false_guard_on_the_first_step_skips_it_at_start() -> None:
    s = shop()
    s.remote("wrap", command="wrapping.wrap", guard=lambda ctx: False, compensation=None)
    s.remote("reserve", command="stock.reserve", compensation=None)
    run = Run(s)
    assert run.sent == [("action", "reserve")]
    assert run.step("wrap").status == StepStatus.SKIPPED


def test_a_false_guard_with_fail_fails_the_step_unsent_and_undoes_the_earlier_ones() -> None:
    run = Run(guarded(lambda ctx: False, "fail"))
    decision = run.succeed()
    assert events(decision) == [
        "step_succeeded",
        "step_failed",
        "saga_compensating",
        "compensation_dispatched",
    ]
    assert [(c.kind, c.step) for c in decision.commands] == [("compensation", "reserve")]
    wrap = run.step("gift_wrap")
    assert wrap.status == StepStatus.FAILED and wrap.attempt == 0
    assert wrap.error is not None and wrap.error["type"] == "guard_failed"
    assert "'gift_wrap' is false" in wrap.error["message"]
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert run.state.error is not None and run.state.error["step"] == "gift_wrap"
    assert ("action", "gift_wrap") not in run.sent
    assert ("compensation", "gift_wrap") not in run.sent  # never sent: nothing to undo


def test_a_false_guard_with_fail_past_the_pivot_parks_the_saga() -> None:
    run = Run(guarded(lambda ctx: False, "fail", pivot_first=True))
    run.succeed()
    parked = run.succeed()  # the charge went through; gift_wrap's guard is false
    assert parked.commands == ()
    assert run.status() == SagaStatus.FAILED
    assert run.state.error is not None and run.state.error["step"] == "gift_wrap"
    error = run.step("gift_wrap").error
    assert error is not None and error["type"] == "guard_failed"
    assert all(kind == "action" for kind, _ in run.sent)
    assert run.outcomes == ["failed"]


def test_a_guard_that_raises_fails_the_step_even_when_false_would_skip() -> None:
    def broken(ctx: GuardContext) -> bool:
        return bool(ctx.results["missing"])

    run = Run(guarded(broken, "skip"))
    run.succeed()
    wrap = run.step("gift_wrap")
    assert wrap.status == StepStatus.FAILED
    assert wrap.error is not None and wrap.error["type"] == "guard_failed"
    assert wrap.error["message"] == "the guard raised KeyError: 'missing'"
    assert wrap.error["retryable"] is False
    assert run.sent[-1] == ("compensation", "reserve")
    assert ("step_skipped", "gift_wrap") not in run.history


def test_a_guard_is_checked_once_per_step_not_per_attempt() -> None:
    calls: list[int] = []

    def guard(_ctx: GuardContext) -> bool:
        calls.append(1)
        return True

    s = shop()
    s.remote("reserve", command="stock.reserve", guard=guard, retry=TWICE, compensation=None)
    run = Run(s)
    run.fail("busy")
    run.when_due()
    assert [c.attempt for c in run.commands] == [1, 2]
    assert len(calls) == 1


# -- sleeps ---------------------------------------------------------------------------------------


def napping(**sleep: Any) -> Saga:
    """reserve -> nap (sleep) -> charge (pivot)."""
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.sleep("nap", **sleep)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    return s


def test_a_sleep_sends_nothing_and_a_timer_wakes_it_then_the_next_step_is_dispatched() -> None:
    run = Run(napping(seconds=3600))
    asleep = run.succeed()
    assert asleep.commands == ()
    assert events(asleep) == ["step_succeeded", "sleep_started"]
    wake = T0 + timedelta(hours=1)
    assert run.detail("sleep_started", "nap") == {"until": wake.isoformat()}
    nap = run.step("nap")
    assert nap.status == StepStatus.RUNNING and not nap.in_flight and nap.due_at == wake
    assert run.state.next_due_at == wake

    assert run.at(wake - timedelta(seconds=1)).history == ()
    woke = run.at(wake)
    assert events(woke) == ["sleep_finished", "step_dispatched"]
    assert [(c.kind, c.step) for c in woke.commands] == [("action", "charge")]
    assert run.step("nap").status == StepStatus.SUCCEEDED
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED
    assert [step for _, step in run.sent] == ["reserve", "charge"]


def test_sleep_until_a_moment_computed_from_the_saga() -> None:
    def until(ctx: GuardContext) -> datetime:
        return T0 + timedelta(minutes=ctx.input["n"])

    run = Run(napping(until=until), input={"n": 30, "flag": True})
    run.succeed()
    assert run.step("nap").due_at == T0 + timedelta(minutes=30)
    assert run.at(T0 + timedelta(minutes=30)).commands[0].step == "charge"


def test_a_naive_until_is_taken_as_utc() -> None:
    naive = datetime(2026, 1, 1, 13, 0)  # no tzinfo, on purpose
    run = Run(napping(until=lambda ctx: naive))
    run.succeed()
    assert run.step("nap").due_at == datetime(2026, 1, 1, 13, 0, tzinfo=UTC)


def test_until_in_the_past_wakes_on_the_next_timer() -> None:
    run = Run(napping(until=lambda ctx: T0 - timedelta(days=1)))
    asleep = run.succeed()
    assert asleep.commands == () and run.step("nap").status == StepStatus.RUNNING
    assert run.state.next_due_at == T0 - timedelta(days=1)
    woke = run.at(T0)
    assert events(woke) == ["sleep_finished", "step_dispatched"]


def test_an_until_that_raises_fails_the_step_and_undoes_the_earlier_ones() -> None:
    run = Run(napping(until=lambda ctx: datetime.fromisoformat(ctx.input["at"])))
    decision = run.succeed()
    nap = run.step("nap")
    assert nap.status == StepStatus.FAILED
    assert nap.error is not None and nap.error["type"] == "sleep_until_failed"
    assert nap.error["message"] == "until= raised KeyError: 'at'"
    assert [(c.kind, c.step) for c in decision.commands] == [("compensation", "reserve")]
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED


def test_a_cancel_during_a_sleep_ends_the_saga_cancelled() -> None:
    run = Run(napping(seconds=3600))
    run.succeed()
    accepted = run.cancel("no longer wanted")
    assert [(c.kind, c.step) for c in accepted.commands] == [("compensation", "reserve")]
    assert run.step("nap").status == StepStatus.FAILED and run.step("nap").due_at is None
    run.succeed()
    assert run.status() == SagaStatus.CANCELLED
    assert run.later(7200).commands == ()
    assert ("sleep_finished", "nap") not in run.history
    assert ("action", "charge") not in run.sent


def test_a_sleep_with_a_false_guard_is_skipped() -> None:
    s = shop()
    s.sleep("nap", seconds=60, guard=lambda ctx: False)
    s.remote("reserve", command="stock.reserve", compensation=None)
    run = Run(s)
    assert run.step("nap").status == StepStatus.SKIPPED
    assert run.sent == [("action", "reserve")]


def test_a_sleep_holds_while_paused_and_wakes_on_resume() -> None:
    run = Run(napping(seconds=60))
    run.succeed()
    run.pause()
    assert run.state.next_due_at is None
    assert run.later(120).history == ()
    resumed = run.resume()
    assert events(resumed) == ["saga_resumed", "sleep_finished", "step_dispatched"]
    assert resumed.commands[0].step == "charge"


def after_the_pivot(until: Any) -> Saga:
    """charge (pivot) -> nap (sleep until=) -> notify."""
    s = shop()
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.sleep("nap", until=until)
    s.remote("notify", command="mail.send", retry=ONCE)
    return s


def test_an_until_that_raises_past_the_pivot_parks_and_a_retry_computes_it_again() -> None:
    moments: list[datetime] = []  # empty: until= raises, as a bug in it would

    def until(_ctx: GuardContext) -> datetime:
        return moments[0]

    run = Run(after_the_pivot(until))
    run.succeed()
    assert run.status() == SagaStatus.FAILED
    error = run.step("nap").error
    assert error is not None and error["type"] == "sleep_until_failed"

    again = run.retry("until= still broken")  # raises again: parked again, nothing sent
    assert events(again) == ["saga_retried", "step_failed", "saga_failed"]
    assert again.commands == () and run.status() == SagaStatus.FAILED

    moments.append(T0 + timedelta(minutes=5))  # the fix is deployed
    fixed = run.retry("until= fixed")
    assert events(fixed) == ["saga_retried", "sleep_started"] and fixed.commands == ()
    assert run.status() == SagaStatus.RUNNING
    nap = run.step("nap")
    assert nap.status == StepStatus.RUNNING and nap.error is None
    assert nap.due_at == T0 + timedelta(minutes=5)
    woke = run.at(T0 + timedelta(minutes=5))
    assert [(c.kind, c.step) for c in woke.commands] == [("action", "notify")]
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED


def test_a_sleep_that_failed_past_the_pivot_can_be_skipped() -> None:
    run = Run(after_the_pivot(lambda ctx: ctx.input["missing"]))
    run.succeed()
    skipped = run.skip("nap", reason="no need to wait")
    assert [(c.kind, c.step) for c in skipped.commands] == [("action", "notify")]
    assert run.step("nap").status == StepStatus.SKIPPED


def test_a_saga_deadline_during_a_sleep_before_the_pivot_compensates() -> None:
    s = shop(deadline=600)
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.sleep("nap", seconds=3600)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.succeed()
    assert run.state.next_due_at == T0 + timedelta(seconds=600)  # before the wake-up
    passed = run.when_due()
    assert [(c.kind, c.step) for c in passed.commands] == [("compensation", "reserve")]
    assert run.step("nap").status == StepStatus.FAILED
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert run.later(7200).history == ()
