"""Heartbeat timeouts and schedule-to-close budgets, on the fake clock.

`heartbeat_timeout` is the longest silence a started attempt may keep: a dead participant is
noticed within it, while `timeout` (start-to-close) still bounds the whole attempt, which no
heartbeat extends. `schedule_to_close` is the step's budget across attempts and retry waits.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Unpack

import pytest

from orchestrator.definition import Saga
from orchestrator.errors import DefinitionError
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, T0, Limits, Run, events, shop

LONG = 3600.0  # start-to-close of the long step
BEAT = 5.0  # its heartbeat timeout
RETRY = Retry(max_attempts=3, initial_interval=2, multiplier=1, jitter=0)


def long_step(**limits: Unpack[Limits]) -> Run:
    """`reserve` (compensatable) -> `export` (long, heartbeating) -> `charge` (pivot)."""
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.remote(
        "export",
        command="reports.export",
        compensation="reports.discard",
        retry=RETRY,
        **(Limits(timeout=LONG, heartbeat_timeout=BEAT) | limits),
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.succeed()  # reserve done; export in flight
    return run


# -- heartbeat timeout ----------------------------------------------------------------------------


def test_a_step_with_a_heartbeat_timeout_asks_for_a_start_report_and_says_the_limit() -> None:
    run = long_step()
    cmd = run.last
    assert (cmd.step, cmd.report_start, cmd.timeout, cmd.heartbeat_timeout) == (
        "export",
        True,
        LONG,
        BEAT,
    )
    # Not yet started: queue time counts against the whole timeout, as without heartbeats.
    assert run.step("export").due_at == cmd.expires_at == T0 + timedelta(seconds=LONG)


def test_heartbeats_keep_a_long_attempt_alive_far_past_its_heartbeat_timeout() -> None:
    run = long_step()
    for n in range(100):  # 100 x 4 s = 80 heartbeat timeouts
        assert run.later(BEAT - 1).history == ()
        assert events(run.heartbeat()) == (["step_started"] if n == 0 else [])
        assert run.step("export").due_at == run.now + timedelta(seconds=BEAT)
    assert run.step("export").attempt == 1 and run.step("export").in_flight
    run.succeed()
    assert run.step("export").status == StepStatus.SUCCEEDED
    assert [c.step for c in run.commands if c.step == "export"] == ["export"]


def test_silence_longer_than_the_heartbeat_timeout_times_the_attempt_out() -> None:
    run = long_step()
    run.later(1)
    assert events(run.heartbeat()) == ["step_started"]
    run.later(BEAT - 1)
    run.heartbeat()
    assert run.later(BEAT - 0.001).history == ()
    timed_out = run.later(0.001)
    assert events(timed_out) == ["step_timed_out", "step_retry_scheduled"]
    assert run.detail("step_timed_out") == {"attempt": 1, "timeout": "heartbeat"}
    error = run.step("export").error
    assert error is not None
    assert (error["type"], error["timeout"], error["retryable"]) == ("timeout", "heartbeat", True)
    assert "no heartbeat within 5s" in error["message"]
    # Noticed after seconds, not after the hour-long start-to-close.
    assert run.now == T0 + timedelta(seconds=1 + BEAT - 1 + BEAT)


def test_heartbeats_do_not_stretch_the_start_to_close_timeout() -> None:
    run = long_step(timeout=20.0)
    run.later(1)
    run.heartbeat()  # started at 1 s: start-to-close ends at 21 s
    for _ in range(4):
        run.later(4)
        run.heartbeat()
    assert run.step("export").due_at == T0 + timedelta(seconds=21)  # 17 + 5 > 21
    timed_out = run.at(T0 + timedelta(seconds=21))
    assert events(timed_out)[0] == "step_timed_out"
    assert run.detail("step_timed_out") == {"attempt": 1, "timeout": "start_to_close"}


def test_a_retried_attempt_reports_its_start_and_heartbeats_afresh() -> None:
    run = long_step()
    run.heartbeat()
    run.later(BEAT)  # silent: timed out
    second = run.when_due().commands[0]
    assert (second.attempt, second.report_start, second.heartbeat_timeout) == (2, True, BEAT)
    assert run.step("export").started_at is None


def test_retries_run_out_on_heartbeat_timeouts_then_the_saga_compensates() -> None:
    run = long_step()
    for _ in range(3):
        run.heartbeat()
        run.later(BEAT)
        if run.status() == SagaStatus.RUNNING:
            run.when_due()
    assert run.status() == SagaStatus.COMPENSATING
    assert run.step("export").outcome_uncertain  # it may have acted: undone too
    assert run.last.kind == "compensation" and run.last.step == "export"


def test_a_compensation_has_its_own_heartbeat_timeout() -> None:
    s = shop()
    s.remote(
        "reserve",
        command="stock.reserve",
        compensation="stock.release",
        retry=ONCE,
        compensation_timeout=600,
        compensation_heartbeat_timeout=3,
        compensation_retry=Retry(max_attempts=2, initial_interval=1, jitter=0),
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    assert run.last.heartbeat_timeout is None  # the action has none
    run.succeed()
    run.fail("declined", retryable=False)
    undo = run.last
    assert (undo.kind, undo.report_start, undo.heartbeat_timeout) == ("compensation", True, 3)
    run.heartbeat()
    assert run.step("reserve").due_at == run.now + timedelta(seconds=3)
    run.later(3)
    assert run.detail("compensation_timed_out") == {"attempt": 1, "timeout": "heartbeat"}
    assert run.step("reserve").status == StepStatus.COMPENSATING


# -- schedule-to-close ----------------------------------------------------------------------------


def flaky(budget: float) -> Run:
    """`reserve` (compensatable), then `export`: 10 attempts, 4 s apart, within `budget`."""
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.remote(
        "export",
        command="reports.export",
        compensation="reports.discard",
        timeout=5,
        retry=Retry(max_attempts=10, initial_interval=4, multiplier=1, jitter=0),
        schedule_to_close=budget,
    )
    run = Run(s)
    run.succeed()
    return run


def test_schedule_to_close_ends_retryable_failures_before_the_attempts_run_out() -> None:
    run = flaky(budget=15)
    while run.status() == SagaStatus.RUNNING:  # fails at 0, 4, 8, 12 s; a 5th would start at 16
        run.fail("flaky")
        if run.status() == SagaStatus.RUNNING:
            run.when_due()
    sent = [c.attempt for c in run.commands if c.step == "export" and c.kind == "action"]
    assert sent == [1, 2, 3, 4]
    assert run.status() == SagaStatus.COMPENSATING
    failed = run.detail("step_failed", "export")
    error = failed["error"]
    assert (error["type"], error["timeout"]) == ("timeout", "schedule_to_close")
    assert "budget of 15s leaves no room for attempt 5" in error["message"]
    assert error["cause"]["message"] == "flaky"
    assert run.state.error is not None and "schedule-to-close" in run.state.error["message"]


def test_the_budget_caps_an_attempts_timeout_and_ends_it_without_a_retry() -> None:
    run = flaky(budget=12)
    run.later(5)  # attempt 1 times out (start-to-close 5 s)
    run.when_due()  # attempt 2 at 9 s: 3 s of budget left
    second = run.last
    assert second.attempt == 2 and second.timeout == pytest.approx(3)
    assert run.step("export").due_at == T0 + timedelta(seconds=12)
    timed_out = run.at(T0 + timedelta(seconds=12))
    assert events(timed_out)[:2] == ["step_timed_out", "step_failed"]
    assert run.detail("step_timed_out") == {"attempt": 2, "timeout": "schedule_to_close"}
    assert run.status() == SagaStatus.COMPENSATING


def test_an_operators_retry_gives_the_step_a_fresh_budget() -> None:
    s = shop()
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote(
        "notify",
        command="mail.send",
        timeout=5,
        retry=Retry(max_attempts=10, initial_interval=1, multiplier=1, jitter=0),
        schedule_to_close=10,
    )
    run = Run(s)
    run.succeed()
    run.later(5)
    run.when_due()
    run.at(T0 + timedelta(seconds=10))  # the budget ends: parked past the pivot
    assert run.status() == SagaStatus.FAILED
    run.later(100)
    run.retry()
    assert run.step("notify").close_at == run.now + timedelta(seconds=10)
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED


# -- definition ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"timeout": 10, "heartbeat_timeout": 10}, "must be shorter than timeout=10"),
        ({"timeout": 10, "heartbeat_timeout": 0.5}, "use at least 1 s"),
        ({"timeout": 10, "schedule_to_close": 5}, "schedule_to_close=5 is shorter than one"),
        ({"heartbeat_timeout": -1}, "heartbeat_timeout must be a positive number"),
        (
            {"compensation_timeout": 5, "compensation_heartbeat_timeout": 9},
            "compensation_heartbeat_timeout=9 must be shorter than compensation_timeout=5",
        ),
        (
            {"compensation_timeout": 5, "compensation_schedule_to_close": 1},
            "compensation_schedule_to_close=1 is shorter",
        ),
    ],
)
def test_limits_that_cannot_hold_are_refused_at_definition_time(limits: Limits, says: str) -> None:
    s = shop()
    with pytest.raises(DefinitionError, match="step 'export'") as refused:
        s.remote("export", command="reports.export", compensation="reports.discard", **limits)
    assert says in str(refused.value)


def test_a_long_step_is_told_what_to_set() -> None:
    s = shop()
    with pytest.raises(DefinitionError) as refused:
        s.remote(
            "export", command="reports.export", timeout=60, heartbeat_timeout=120, compensation=None
        )
    assert "set a long timeout" in str(refused.value)
    assert "short heartbeat_timeout" in str(refused.value)


def test_new_limits_enter_the_fingerprint_only_when_set() -> None:
    def saga(**limits: Unpack[Limits]) -> Saga:
        s = shop()
        s.remote(
            "export", command="reports.export", compensation=None, **(Limits(timeout=60) | limits)
        )
        return s

    plain = saga()
    assert "heartbeat_timeout" not in plain.document()["steps"][0]
    assert saga().fingerprint == plain.fingerprint
    assert saga(heartbeat_timeout=5).fingerprint != plain.fingerprint
    assert saga(schedule_to_close=600).document()["steps"][0]["schedule_to_close"] == 600
