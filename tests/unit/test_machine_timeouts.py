"""Step timeouts in two phases, and heartbeats that carry progress.

A step with `schedule_to_start` must be taken by a participant (its first heartbeat) within
that window; from then on the start-to-close timeout (the step's `timeout`) runs, which no
heartbeat extends. A heartbeat's details are the step's progress, handed to its next attempt.
"""

from __future__ import annotations

from datetime import timedelta

from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, T0, Run, events, shop

START = 5.0  # schedule_to_start
CLOSE = 60.0  # timeout (start-to-close)
RETRY = Retry(max_attempts=3, initial_interval=2, jitter=0)


def queued(retry: Retry = RETRY) -> Run:
    """One step, `report` (compensatable), with a schedule-to-start window; then `notify`."""
    s = shop()
    s.remote(
        "report",
        command="reports.build",
        compensation="reports.discard",
        timeout=CLOSE,
        schedule_to_start=START,
        retry=retry,
    )
    s.remote("notify", command="mail.send", retry=ONCE, compensation=None)
    return Run(s)


# -- schedule-to-start ----------------------------------------------------------------------------


def test_dispatch_asks_for_a_start_report_and_expires_at_the_end_of_the_start_window() -> None:
    run = queued()
    (cmd,) = run.commands
    assert cmd.report_start is True
    assert cmd.timeout == CLOSE
    assert cmd.expires_at == T0 + timedelta(seconds=START)
    step = run.step("report")
    assert step.due_at == cmd.expires_at and step.started_at is None
    assert run.state.next_due_at == T0 + timedelta(seconds=START)


def test_without_schedule_to_start_the_whole_timeout_is_the_window() -> None:
    s = shop()
    s.remote("report", command="reports.build", timeout=CLOSE, compensation=None)
    run = Run(s)
    (cmd,) = run.commands
    assert cmd.report_start is False
    assert cmd.timeout == CLOSE
    assert cmd.expires_at == T0 + timedelta(seconds=CLOSE)
    assert run.step("report").due_at == cmd.expires_at


def test_no_heartbeat_within_the_window_times_out_as_schedule_to_start_and_retries() -> None:
    run = queued()
    first = run.last
    assert run.later(START - 0.001).history == ()  # still inside the window

    timed_out = run.at(T0 + timedelta(seconds=START))
    assert events(timed_out) == ["step_timed_out", "step_retry_scheduled"]
    assert run.detail("step_timed_out") == {"attempt": 1, "timeout": "schedule_to_start"}
    error = run.step("report").error
    assert error is not None
    assert (error["type"], error["timeout"], error["retryable"]) == (
        "timeout",
        "schedule_to_start",
        True,
    )
    assert "5s" in error["message"] and "schedule-to-start" in error["message"]

    retried = run.when_due()  # the retry policy's 2 s wait
    (second,) = retried.commands
    assert run.now == T0 + timedelta(seconds=START + 2)
    assert (second.attempt, second.report_start) == (2, True)
    assert second.command_id != first.command_id
    assert second.expires_at == run.now + timedelta(seconds=START)  # a fresh window


def test_the_first_heartbeat_starts_the_start_to_close_timeout() -> None:
    run = queued()
    run.now = T0 + timedelta(seconds=3)
    beat = run.heartbeat()
    assert events(beat) == ["step_started"]
    assert beat.commands == () and beat.events == ()
    step = run.step("report")
    assert step.started_at == T0 + timedelta(seconds=3)
    assert step.due_at == T0 + timedelta(seconds=3 + CLOSE)

    # The start window ends quietly: the participant has the command.
    assert run.at(T0 + timedelta(seconds=START)).history == ()
    run.now = T0 + timedelta(seconds=40)
    again = run.heartbeat()
    assert again.history == ()  # only the first heartbeat is recorded
    assert run.step("report").started_at == T0 + timedelta(seconds=3)
    assert run.step("report").due_at == T0 + timedelta(seconds=3 + CLOSE)  # not extended

    assert run.at(T0 + timedelta(seconds=3 + CLOSE - 0.001)).history == ()
    timed_out = run.at(T0 + timedelta(seconds=3 + CLOSE))
    assert events(timed_out)[0] == "step_timed_out"
    assert run.detail("step_timed_out") == {"attempt": 1, "timeout": "start_to_close"}
    error = run.step("report").error
    assert error is not None and error["timeout"] == "start_to_close"
    assert "60s" in error["message"]


def test_a_retried_attempt_must_report_its_start_again() -> None:
    run = queued()
    run.heartbeat()
    run.later(CLOSE)  # start-to-close timeout of attempt 1
    run.when_due()  # attempt 2
    step = run.step("report")
    assert (step.attempt, step.started_at) == (2, None)
    assert step.due_at == run.now + timedelta(seconds=START)
    run.later(START)
    assert run.detail("step_timed_out") == {"attempt": 2, "timeout": "schedule_to_start"}


def test_schedule_to_start_timeouts_exhaust_the_policy_then_compensate() -> None:
    run = queued(retry=Retry(max_attempts=2, initial_interval=1, jitter=0))
    run.later(START)  # attempt 1: never taken
    run.when_due()  # attempt 2
    run.later(START)  # never taken either
    assert [c.attempt for c in run.commands if c.kind == "action"] == [1, 2]
    # Never started, but the command might still be taken: its outcome is uncertain.
    assert run.step("report").outcome_uncertain
    assert run.sent[-1] == ("compensation", "report")
    assert run.step("report").status == StepStatus.COMPENSATING
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert run.state.error is not None and "schedule-to-start" in run.state.error["message"]


def test_a_reply_without_a_heartbeat_is_applied_within_the_window() -> None:
    run = queued()
    run.now = T0 + timedelta(seconds=1)
    run.succeed({"pages": 3})
    assert run.step("report").status == StepStatus.SUCCEEDED
    assert run.last.step == "notify" and run.last.report_start is False


# -- heartbeat details (progress) -----------------------------------------------------------------


def test_heartbeat_details_are_stored_as_progress_and_sent_with_the_next_attempt() -> None:
    run = queued()
    first = run.last
    assert first.progress is None
    run.heartbeat({"done": 100})
    assert run.step("report").progress == {"done": 100}
    run.heartbeat({"done": 250})
    assert run.step("report").progress == {"done": 250}
    run.heartbeat()  # no details: the checkpoint stays
    assert run.step("report").progress == {"done": 250}

    run.fail("worker died")
    retried = run.when_due()
    (second,) = retried.commands
    assert second.attempt == 2
    assert second.progress == {"done": 250}


def test_progress_survives_a_timeout_and_later_heartbeats_replace_it() -> None:
    run = queued()
    run.heartbeat({"done": 1})
    run.later(CLOSE)  # timed out
    second = run.when_due().commands[0]
    assert second.progress == {"done": 1}
    run.heartbeat({"done": 2}, command=second)
    run.fail("again")
    third = run.when_due().commands[0]
    assert (third.attempt, third.progress) == (3, {"done": 2})


def test_a_heartbeat_of_an_old_attempt_does_not_touch_the_progress() -> None:
    run = queued()
    first = run.last
    run.heartbeat({"done": 10})
    run.fail("flaky")
    run.when_due()
    before = run.state
    stale = run.heartbeat({"done": 999}, command=first)
    assert stale.state == before
    assert run.step("report").progress == {"done": 10}


def test_compensations_carry_no_progress() -> None:
    run = queued()
    run.heartbeat({"done": 10})
    run.succeed()
    run.fail("mail down")  # notify fails for good: undo report
    assert run.last.kind == "compensation"
    assert run.last.progress is None and run.last.report_start is False


def test_a_compensations_heartbeat_leaves_its_deadline_and_the_actions_checkpoint() -> None:
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.heartbeat({"done": 7})
    run.succeed()
    run.fail("declined", retryable=False)  # stock.release now in flight
    release = run.last
    assert release.kind == "compensation"
    before = run.step("reserve")

    run.later(4)
    beat = run.heartbeat({"released": 3})
    after = run.step("reserve")
    assert after.due_at == before.due_at  # no heartbeat timeout: a heartbeat only says alive
    # The checkpoint is the action's: a compensation leaves it be, and records no start.
    assert events(beat) == []
    assert after.progress == {"done": 7}
