"""Wait steps and signals: a step that waits for a named signal from outside, with a timeout
that is a database timer; signals taken, held when early, deduplicated by id, or refused."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator import Retry, Saga
from orchestrator.definition import GuardContext
from orchestrator.errors import DefinitionError
from orchestrator.event_names import HistoryEvent, Outcome
from orchestrator.state import SagaStatus, StepStatus
from orchestrator.testing import START, SagaTest, fail, succeed

HOUR = 3600.0
ONCE = Retry(max_attempts=1)


class In(BaseModel):
    amount: int = 10


class Review(BaseModel):
    approved: bool
    reviewer: str = "someone"


def reviewed(*, after_pivot: bool = False, **wait: Any) -> Saga:
    """reserve -> review (a wait) -> charge (pivot) -> ship; with `after_pivot` the review
    comes after the charge."""
    s = Saga("reviewed", version=1, input=In)
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    if after_pivot:
        s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.wait("review", **{"timeout": HOUR, "result": Review, **wait})
    if not after_pivot:
        s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote("ship", command="shipping.ship", payload=_shipping, retry=ONCE)
    return s


def _shipping(ctx: GuardContext) -> dict[str, Any]:
    if "review" not in ctx.results:
        return {"reviewer": None}
    return {"reviewer": ctx.result("review", Review).reviewer}


def waiting(**wait: Any) -> SagaTest:
    t = SagaTest(reviewed(**wait), input={})
    t.run()
    assert t.waiting_for == ["review"]
    return t


def refusal(t: SagaTest) -> dict[str, Any]:
    """The last refusal's history detail, after checking its outcome event says the same."""
    entry = [h for h in t.history if h.event == HistoryEvent.SIGNAL_REFUSED][-1]
    event = t.outcomes[-1]
    assert event.status == Outcome.SIGNAL_REFUSED and event.routing_key.endswith(".signal_refused")
    assert event.error is not None and entry.detail is not None
    assert event.error["reason"] == entry.detail["reason"]
    assert event.error["signal_id"] == entry.detail["signal_id"]
    return entry.detail


def test_a_wait_step_waits_for_its_signal_until_its_timeout() -> None:
    t = waiting()
    step = t.step("review")
    assert step.status == StepStatus.RUNNING and step.command_id is None
    assert step.due_at == START + timedelta(seconds=HOUR)
    assert t.entry("wait_started", "review").detail == {
        "signal": "review",
        "until": step.due_at.isoformat(),
        "timeout": HOUR,
    }
    assert t.sent() == ["stock.reserve"]  # nothing is sent for a wait


def test_the_signal_is_the_steps_result_and_flows_on() -> None:
    t = waiting()
    t.advance(60)
    t.signal("review", Review(approved=True, reviewer="ana"))
    t.run()
    assert t.status == "completed"
    assert t.results["review"] == {"approved": True, "reviewer": "ana"}
    assert t.command("shipping.ship").payload == {"reviewer": "ana"}
    finished = t.entry("wait_finished", "review").detail
    assert finished is not None and finished["held"] is False and finished["seconds"] == 60


def test_a_signal_before_the_wait_begins_is_held_and_taken_when_it_begins() -> None:
    t = SagaTest(reviewed(), input={})  # reserve is in flight: run() answers it
    assert t.step("review").status == StepStatus.PENDING
    t.signal("review", {"approved": True}, signal_id="early")
    assert [h.event for h in t.decisions[-1].history] == [HistoryEvent.SIGNAL_HELD]
    assert t.step("review").status == StepStatus.PENDING
    t.run()
    assert t.status == "completed"
    assert t.results["review"] == {"approved": True}
    assert t.entry("wait_finished", "review").detail == {
        "signal_id": "early",
        "held": True,
        "seconds": 0.0,
    }
    assert not [h for h in t.history if h.event == HistoryEvent.WAIT_STARTED]


@pytest.mark.parametrize("when", ["held", "taken", "finished"])
def test_the_same_signal_id_again_changes_nothing(when: str) -> None:
    t = SagaTest(reviewed(), input={})
    if when != "held":
        t.run()  # else the signal comes while reserve is in flight
    t.signal("review", {"approved": True}, signal_id="s-1")
    if when == "finished":
        t.run()
        assert t.status == "completed"
    before = t.state
    again = t.signal("review", {"approved": False}, signal_id="s-1")
    assert not again.changed and t.state == before


def test_a_signal_the_saga_never_waits_for_is_refused_and_announced() -> None:
    t = waiting()
    t.signal("approval", {"approved": True}, signal_id="x")
    detail = refusal(t)
    assert detail["reason"] == "not_waited_for"
    assert "never waits for signal 'approval'; it waits for: review" in detail["why"]
    assert t.waiting_for == ["review"]  # the wait goes on
    t.signal("ship", {}, signal_id="y")  # a step, but not a wait
    assert refusal(t)["reason"] == "not_waited_for"


def test_a_payload_that_fails_the_model_is_refused_and_the_wait_goes_on() -> None:
    t = waiting()
    t.signal("review", {"approved": "perhaps"}, signal_id="bad")
    detail = refusal(t)
    assert detail["reason"] == "invalid_payload"
    assert detail["why"] == (
        "the payload does not match Review: approved: Input should be a valid boolean, "
        "unable to interpret input"
    )
    assert "perhaps" not in str(t.outcomes[-1].error)  # values may be secrets
    t.signal("review", {"approved": True}, signal_id="good")
    t.run()
    assert t.status == "completed"


def test_a_second_signal_for_a_wait_that_has_one_is_refused() -> None:
    t = waiting()
    t.signal("review", {"approved": True}, signal_id="first")
    t.signal("review", {"approved": False}, signal_id="second")
    detail = refusal(t)
    assert detail["reason"] == "wait_over"
    assert "has signal 'first' already" in detail["why"]
    assert t.step("review").result == {"approved": True}


def test_a_signal_for_a_finished_saga_is_refused() -> None:
    t = waiting()
    t.signal("review", {"approved": True})
    t.run()
    t.signal("review", {"approved": True}, signal_id="late")
    assert refusal(t)["reason"] == "finished"
    assert t.status == "completed"


def test_a_wait_that_times_out_before_the_pivot_undoes_the_earlier_steps() -> None:
    t = waiting()
    t.advance(HOUR)
    assert t.status == "compensated"
    assert t.sent() == ["stock.reserve", "stock.release"]
    assert t.step("review").error == {
        "type": "wait_timeout",
        "message": "no signal 'review' came within 3600 s",
        "retryable": False,
    }
    assert t.entry("wait_timed_out", "review").detail == {"on_timeout": "fail", "seconds": HOUR}
    t.signal("review", {"approved": True}, signal_id="too-late")
    assert refusal(t)["reason"] == "finished"


def test_a_wait_that_times_out_past_the_pivot_parks_and_a_retry_waits_afresh() -> None:
    t = SagaTest(reviewed(after_pivot=True), input={})
    t.run()
    t.advance(HOUR)
    assert t.status == "failed"
    assert t.error is not None and t.error["step"] == "review"
    assert t.sent() == ["stock.reserve", "payments.charge"]  # nothing undone past the pivot
    t.retry("the reviewer is back")
    assert t.waiting_for == ["review"]
    assert t.step("review").due_at == t.now + timedelta(seconds=HOUR)
    t.signal("review", {"approved": True, "reviewer": "bo"})
    t.run()
    assert t.status == "completed"


def test_on_timeout_skip_goes_on_without_the_signal() -> None:
    t = waiting(on_timeout="skip")
    t.advance(HOUR)
    t.run()
    assert t.status == "completed"
    assert t.step("review").status == StepStatus.SKIPPED
    assert t.command("shipping.ship").payload == {"reviewer": None}


def test_a_cancel_while_waiting_compensates_and_later_signals_are_refused() -> None:
    t = waiting()
    t.cancel("the customer changed their mind")
    t.run()
    assert t.status == "cancelled"
    assert t.sent() == ["stock.reserve", "stock.release"]
    t.signal("review", {"approved": True}, signal_id="after-cancel")
    assert refusal(t)["reason"] == "finished"


def test_a_signal_while_compensating_is_refused() -> None:
    t = SagaTest(reviewed(), input={}, auto=False)
    t.reply("stock.reserve", fail("unsure", retryable=True))  # ONCE: fails for good
    assert t.state.status == SagaStatus.COMPENSATING  # the release is in flight
    t.signal("review", {"approved": True}, signal_id="meanwhile")
    assert refusal(t)["reason"] == "compensating"


def test_pause_holds_the_timeout_and_a_signal_while_paused_is_taken_on_resume() -> None:
    t = waiting()
    t.pause("audit")
    t.advance(2 * HOUR)
    assert t.status == "paused" and t.step("review").status == StepStatus.RUNNING
    t.signal("review", {"approved": True})
    assert t.step("review").status == StepStatus.SUCCEEDED
    assert t.sent() == ["stock.reserve"]  # paused: nothing new is dispatched
    t.resume("audit done")
    t.run()
    assert t.status == "completed"


def test_a_timeout_that_passed_while_paused_fires_on_resume() -> None:
    t = waiting()
    t.pause("audit")
    t.advance(2 * HOUR)
    t.resume("audit done")
    t.run()
    assert t.status == "compensated"


def test_a_guard_may_skip_the_wait_and_a_signal_for_it_is_refused() -> None:
    t = SagaTest(reviewed(guard=lambda ctx: ctx.input["amount"] > 100), input={"amount": 5})
    t.run()
    assert t.status == "completed"
    assert t.step("review").status == StepStatus.SKIPPED
    t2 = SagaTest(
        reviewed(guard=lambda ctx: ctx.input["amount"] > 100), input={"amount": 5}, auto=False
    )
    t2.reply("stock.reserve", succeed())
    assert t2.sent() == ["stock.reserve", "payments.charge"]
    t2.signal("review", {"approved": True}, signal_id="unneeded")
    assert refusal(t2)["reason"] == "wait_over"
    assert "is skipped" in refusal(t2)["why"]


def test_a_wait_runs_alongside_parallel_steps() -> None:
    s = Saga("side", version=1, input=In)
    with s.parallel():
        s.remote("pack", command="stock.pack", compensation="stock.unpack", retry=ONCE)
        s.wait("pickup", timeout=HOUR)
    s.remote("ship", command="shipping.ship", pivot=True, retry=ONCE)
    t = SagaTest(s, input={})
    t.run()
    assert t.waiting_for == ["pickup"] and t.sent() == ["stock.pack"]
    t.signal("pickup", {"at": "dock 4"})
    t.run()
    assert t.status == "completed" and t.results["pickup"] == {"at": "dock 4"}


def test_a_wait_needs_a_timeout_and_a_known_on_timeout() -> None:
    s = Saga("w", version=1, input=In)
    with pytest.raises(DefinitionError, match="a wait needs timeout="):
        s.wait("review")
    with pytest.raises(DefinitionError, match="on_timeout must be 'fail' or 'skip'"):
        s.wait("review", timeout=1, on_timeout="park")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="timeout must be a positive number"):
        s.wait("review", timeout=0)


def test_the_fingerprint_tells_waits_apart() -> None:
    one = reviewed()
    assert one.waits() == ("review",)
    assert one.step("review").document()["wait"] == {"timeout": HOUR, "on_timeout": "fail"}
    assert reviewed().fingerprint == one.fingerprint
    assert reviewed(on_timeout="skip").fingerprint != one.fingerprint
