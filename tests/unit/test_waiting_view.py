"""Where a wait step stands as operators see it (orchestrator/waiting.py): pending, a signal
held for it, waiting since/until, its signal taken, or ended without one; and the line
`saga status` prints for each."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.state import StepStatus
from orchestrator.testing import START, SagaTest
from orchestrator.waiting import WaitView, wait_view, waiting_for, waits
from tests.unit.test_machine_waits import HOUR, reviewed


def view(t: SagaTest, step: str = "review") -> WaitView | None:
    return wait_view(t.definition, t.step(step))


def test_a_wait_step_from_pending_through_waiting_to_taken() -> None:
    t = SagaTest(reviewed(), input={})
    pending = view(t)
    assert pending == WaitView("review", "pending", HOUR, "fail")
    assert pending.describe() == "will wait for signal review (at most 3600 s)"
    assert view(t, "reserve") is None  # not a wait
    t.run()
    until = START + timedelta(seconds=HOUR)
    waiting = view(t)
    assert waiting == WaitView("review", "waiting", HOUR, "fail", since=START, until=until)
    assert waiting.describe() == (
        "waiting for signal review since 2026-01-01 12:00:00 UTC, until 2026-01-01 13:00:00 UTC"
    )
    assert waiting_for(waits(t.definition, t.state)) == ["review"]
    t.advance(60)
    t.signal("review", {"approved": True}, signal_id="s-1")
    taken = view(t)
    assert taken is not None and (taken.stage, taken.signal_id) == ("taken", "s-1")
    assert taken.received_at == START + timedelta(seconds=60)
    assert taken.describe() == "signal review taken (id s-1)"
    assert waiting_for(waits(t.definition, t.state)) == []


def test_a_signal_held_before_the_wait_begins() -> None:
    t = SagaTest(reviewed(), input={})
    t.signal("review", {"approved": True}, signal_id="early")
    held = view(t)
    assert held is not None and (held.stage, held.signal_id) == ("held", "early")
    assert held.describe() == (
        "signal review held (id early, received 2026-01-01 12:00:00 UTC): taken when the step "
        "begins"
    )


def test_a_wait_that_timed_out_has_ended() -> None:
    t = SagaTest(reviewed(on_timeout="skip"), input={})
    t.run()
    t.advance(HOUR + 1)
    t.run()
    assert t.step("review").status == StepStatus.SKIPPED
    ended = view(t)
    assert ended is not None and ended.stage == "ended" and ended.describe() == ""
    assert ended.on_timeout == "skip"


def test_without_its_definition_a_saga_shows_no_waits() -> None:
    t = SagaTest(reviewed(), input={})
    t.run()
    assert waits(None, t.state) == {}
