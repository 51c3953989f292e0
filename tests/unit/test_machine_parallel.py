"""Parallel groups: steps of a `parallel()` block are dispatched together (fan-out), the saga
moves on once all succeeded (fan-in), and a failing branch has every branch that succeeded
(or was in flight) compensated, then the earlier steps in reverse."""

from __future__ import annotations

import pytest

from orchestrator.definition import Saga
from orchestrator.errors import DefinitionError
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, TWICE, Run, shop


def fan_out(*, after_pivot: bool = False, retry: Retry = ONCE) -> Saga:
    """order -> [credit | stock | coupon] -> charge (pivot) -> notify; or, `after_pivot`,
    order -> charge (pivot) -> [mail | sms] ."""
    s = shop()
    s.remote("order", command="orders.open", compensation="orders.close", retry=ONCE)
    if after_pivot:
        s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
        with s.parallel():
            s.remote("mail", command="mail.send", retry=retry)
            s.remote("sms", command="sms.send", retry=retry)
        return s
    with s.parallel():
        s.remote(
            "credit", command="customers.reserve", compensation="customers.release", retry=retry
        )
        s.remote(
            "stock", command="inventory.reserve", compensation="inventory.release", retry=retry
        )
        s.remote("coupon", command="coupons.use", compensation="coupons.restore", retry=retry)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote("notify", command="mail.send", retry=ONCE)
    return s


def started_group() -> Run:
    run = Run(fan_out())
    run.succeed()  # order
    return run


def test_a_group_is_dispatched_together_and_the_saga_waits_for_every_branch() -> None:
    run = started_group()
    assert run.sent[-3:] == [("action", "credit"), ("action", "stock"), ("action", "coupon")]
    credit, stock, coupon = run.commands[-3:]
    run.succeed({"c": 1}, command=stock)
    run.succeed({"c": 2}, command=coupon)
    assert run.last.step == "coupon"  # nothing new while a branch is out
    run.succeed({"c": 3}, command=credit)
    assert run.last.step == "charge"
    assert run.state.results()["stock"] == {"c": 1}


def test_a_failing_branch_waits_for_the_branches_in_flight_then_undoes_all_in_reverse() -> None:
    run = started_group()
    credit, stock, coupon = run.commands[-3:]
    run.succeed(command=credit)
    run.fail("out of stock", retryable=False, command=stock)
    assert run.status() == SagaStatus.COMPENSATING
    assert run.last.step == "coupon"  # coupon is in flight: its success must be undone too
    run.succeed(command=coupon)
    # The group's successes are undone together, then the earlier step.
    assert run.sent[-2:] == [("compensation", "coupon"), ("compensation", "credit")]
    coupon_undo, credit_undo = run.commands[-2:]
    run.succeed(command=credit_undo)
    assert run.last.step == "credit"  # the stage is not undone until every branch is
    run.succeed(command=coupon_undo)
    assert run.last == run.last_for("order") and run.last.kind == "compensation"
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    assert run.state.error is not None and run.state.error["step"] == "stock"
    assert run.statuses()["stock"] == StepStatus.FAILED


def test_a_branch_failing_while_another_waits_to_retry_stops_the_wait() -> None:
    run = Run(fan_out(retry=TWICE))
    run.succeed()
    credit, stock, coupon = run.commands[-3:]
    run.fail("flaky", command=credit)  # retry scheduled
    assert run.step("credit").due_at is not None
    run.fail("no", retryable=False, command=stock)
    assert run.step("credit").status == StepStatus.FAILED
    assert run.step("credit").due_at is None
    run.succeed(command=coupon)
    # credit's failed attempt is undone too: a retryable failure is not proof it did nothing.
    assert sorted(run.sent[-2:]) == [("compensation", "coupon"), ("compensation", "credit")]


def test_replies_for_branches_in_any_order_merge_into_the_results() -> None:
    run = started_group()
    credit, stock, coupon = run.commands[-3:]
    for cmd, n in ((coupon, 3), (credit, 1), (stock, 2)):
        run.succeed({"n": n}, command=cmd)
    results = run.state.results()
    assert [results[s]["n"] for s in ("credit", "stock", "coupon")] == [1, 2, 3]


def test_a_duplicate_reply_for_a_branch_is_ignored() -> None:
    run = started_group()
    credit, _stock, _coupon = run.commands[-3:]
    run.succeed(command=credit)
    again = run.succeed(command=credit)
    assert [h.event for h in again.history] == ["reply_ignored"]


def test_cancel_during_a_group_undoes_what_the_branches_did() -> None:
    run = started_group()
    credit, stock, coupon = run.commands[-3:]
    run.succeed(command=credit)
    run.cancel()
    assert run.status() == SagaStatus.COMPENSATING
    run.succeed(command=stock)
    run.fail("refused", retryable=False, command=coupon)
    assert sorted(run.sent[-2:]) == [("compensation", "credit"), ("compensation", "stock")]
    for cmd in run.commands[-2:]:
        run.succeed(command=cmd)
    run.succeed()  # order
    assert run.status() == SagaStatus.CANCELLED


def test_a_branch_failing_past_the_pivot_parks_and_a_retry_sends_only_it_again() -> None:
    run = Run(fan_out(after_pivot=True))
    run.succeed()
    run.succeed()  # charge
    mail, sms = run.commands[-2:]
    run.fail("smtp down", command=mail)
    assert run.status() == SagaStatus.FAILED
    run.succeed(command=sms)  # a branch in flight still reports
    assert run.step("sms").status == StepStatus.SUCCEEDED
    run.retry()
    assert run.sent[-1] == ("action", "mail")
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED


def test_guards_apply_per_branch() -> None:
    s = shop()
    with s.parallel():
        s.remote("a", command="svc.a", guard=lambda ctx: False, compensation=None)
        s.remote("b", command="svc.b", compensation=None)
    s.remote("c", command="svc.c", compensation=None)
    run = Run(s)
    assert run.sent == [("action", "b")]
    assert run.statuses()["a"] == StepStatus.SKIPPED
    run.succeed()
    assert run.last.step == "c"


def test_a_group_whose_branches_are_all_skipped_moves_on() -> None:
    s = shop()
    with s.parallel():
        s.remote("a", command="svc.a", guard=lambda ctx: False, compensation=None)
        s.remote("b", command="svc.b", guard=lambda ctx: False, compensation=None)
    s.remote("c", command="svc.c", compensation=None)
    assert Run(s).sent == [("action", "c")]


def test_a_failing_guard_in_a_group_sends_no_further_branch() -> None:
    s = shop()
    s.remote("first", command="svc.first", compensation="svc.undo_first")
    with s.parallel():
        s.remote(
            "a", command="svc.a", guard=lambda ctx: False, on_guard_false="fail", compensation=None
        )
        s.remote("b", command="svc.b", compensation=None)
    run = Run(s)
    run.succeed()
    assert run.sent[-1] == ("compensation", "first")
    assert run.statuses()["b"] == StepStatus.PENDING


def test_the_definition_checks_parallel_blocks() -> None:
    s = shop()
    with pytest.raises(DefinitionError, match="at least two"), s.parallel():
        s.remote("a", command="svc.a", compensation=None)
    with pytest.raises(DefinitionError, match="holds no steps"), s.parallel():
        pass
    with pytest.raises(DefinitionError, match="cannot be nested"), s.parallel(), s.parallel():
        pass
    with pytest.raises(DefinitionError, match="pivot"), s.parallel():
        s.remote("p", command="svc.p", pivot=True)


def test_grouping_is_part_of_the_fingerprint() -> None:
    flat = shop()
    flat.remote("a", command="svc.a", compensation=None)
    flat.remote("b", command="svc.b", compensation=None)
    grouped = shop()
    with grouped.parallel():
        grouped.remote("a", command="svc.a", compensation=None)
        grouped.remote("b", command="svc.b", compensation=None)
    assert flat.fingerprint != grouped.fingerprint
    assert [s.stage for s in grouped.steps] == [0, 0]
    assert [s.stage for s in flat.steps] == [0, 1]
