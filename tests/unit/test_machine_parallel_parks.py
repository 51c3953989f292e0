"""Two compensations of one stage that both run out park the saga once: the second is parked
beside the first, and an operator's retry carries on compensating both. (Found by the
property test.)"""

from __future__ import annotations

from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, Run, shop


def two_branches_then_pivot() -> Run:
    s = shop()
    with s.parallel():
        s.remote(
            "a", command="svc.a", compensation="svc.undo_a", retry=ONCE, compensation_retry=ONCE
        )
        s.remote(
            "b", command="svc.b", compensation="svc.undo_b", retry=ONCE, compensation_retry=ONCE
        )
    s.remote("c", command="svc.c", pivot=True, retry=ONCE)
    run = Run(s)
    a, b = run.commands
    run.succeed(command=a)
    run.succeed(command=b)
    run.fail("declined", retryable=False)  # the pivot: undo b and a together
    assert run.sent[-2:] == [("compensation", "b"), ("compensation", "a")]
    return run


def test_a_sibling_compensation_running_out_leaves_the_park_as_it_was() -> None:
    run = two_branches_then_pivot()
    undo_b, undo_a = run.commands[-2:]
    run.fail("undo b broke", command=undo_b)
    assert run.status() == SagaStatus.FAILED
    parked = run.state
    late = run.fail("undo a broke", command=undo_a)
    assert run.step("a").status == StepStatus.COMPENSATING
    assert late.events == ()
    assert run.state.resume_status == parked.resume_status == SagaStatus.COMPENSATING
    assert run.state.error == parked.error
    assert [h.event for h in late.history] == ["compensation_parked"]


def test_an_operator_retry_after_it_carries_on_compensating() -> None:
    run = two_branches_then_pivot()
    undo_b, undo_a = run.commands[-2:]
    run.fail("undo b broke", command=undo_b)
    run.fail("undo a broke", command=undo_a)
    run.retry()
    assert run.status() == SagaStatus.COMPENSATING
    assert sorted(run.sent[-2:]) == [("compensation", "a"), ("compensation", "b")]
    for cmd in run.commands[-2:]:
        run.succeed(command=cmd)
    assert run.status() == SagaStatus.COMPENSATED


def test_two_last_compensations_timing_out_together_park_once() -> None:
    run = two_branches_then_pivot()
    decision = run.when_due()  # both time out at once
    assert [e.status for e in decision.events] == ["failed"]
    assert run.state.resume_status == SagaStatus.COMPENSATING
