"""Payloads built from earlier results (`payload=`): computed once when the step begins, from
the results of the stages that finished before it (never a running branch's), kept with the
step and sent unchanged by every attempt and the compensation; a payload function that fails
fails its step without sending it."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.definition import GuardContext, Saga
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, TWICE, Run, shop


class Seen:
    """A payload function that records what it was shown each time it runs."""

    def __init__(self, build: Any = None) -> None:
        self.calls: list[GuardContext] = []
        self.build = build or (lambda ctx: {"seen": sorted(ctx.results)})

    def __call__(self, ctx: GuardContext) -> dict[str, Any]:
        self.calls.append(ctx)
        return dict(self.build(ctx))


def reserve_then_charge(payload: Any, *, retry: Retry = ONCE) -> Saga:
    """reserve -> charge (payload=, compensatable) -> ship (pivot)."""
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.remote(
        "charge",
        command="payments.charge",
        compensation="payments.refund",
        retry=retry,
        payload=payload,
    )
    s.remote("ship", command="fleet.ship", pivot=True, retry=ONCE)
    return s


def with_reservation(ctx: GuardContext) -> dict[str, Any]:
    return {"n": ctx.input["n"], "reservation": ctx.results["reserve"]["id"]}


def test_the_command_carries_what_payload_built_from_the_input_and_earlier_results() -> None:
    run = Run(reserve_then_charge(with_reservation), input={"n": 4, "flag": True})
    assert run.last.payload == {"n": 4, "flag": True}  # reserve: no payload=, the input
    assert run.step("reserve").payload is None  # and nothing extra stored
    run.succeed({"id": "r-9"})
    assert run.last.step == "charge"
    assert run.last.payload == {"n": 4, "reservation": "r-9"}
    assert run.last.item is None
    assert run.step("charge").payload == {"n": 4, "reservation": "r-9"}


def test_every_attempt_and_the_compensation_send_the_payload_computed_once() -> None:
    seen = Seen(lambda ctx: {"reservation": ctx.results["reserve"]["id"]})
    run = Run(reserve_then_charge(seen, retry=TWICE))
    run.succeed({"id": "r-1"})
    first = run.last
    run.fail("busy", retryable=True)
    run.when_due()
    second = run.last
    assert (first.attempt, second.attempt) == (1, 2)
    run.succeed({"charged": 5}, command=second)
    run.fail("no truck", retryable=False)  # ship, the pivot: undo charge and reserve
    refund = run.last_for("charge")
    assert refund.kind == "compensation"
    assert first.payload == second.payload == refund.payload == {"reservation": "r-1"}
    assert len(seen.calls) == 1


def test_a_parallel_branch_sees_the_earlier_stages_never_a_sibling() -> None:
    seen_b, seen_after = Seen(), Seen()
    s = shop()
    s.remote("first", command="a.first", compensation="a.undo", retry=ONCE)
    with s.parallel():
        s.remote("left", command="b.left", compensation="b.undo", retry=ONCE)
        s.remote("right", command="c.right", compensation="c.undo", retry=ONCE, payload=seen_b)
    s.remote("after", command="d.after", compensation="d.undo", retry=ONCE, payload=seen_after)
    run = Run(s)
    run.succeed({"id": 1})  # first
    left, right = run.commands[-2:]
    assert (left.step, right.step) == ("left", "right")
    assert right.payload == {"seen": ["first"]}  # left was dispatched, not finished
    run.succeed({"id": 2}, command=left)
    assert not seen_after.calls  # right still runs: the next stage waits
    run.succeed({"id": 3}, command=right)
    assert run.last.payload == {"seen": ["first", "left", "right"]}
    assert [sorted(c.results) for c in seen_b.calls] == [["first"]]


def test_a_map_sends_its_payload_with_every_item_and_may_take_items_from_results() -> None:
    s = shop()
    s.remote("list", command="files.list", compensation=None, retry=ONCE)
    s.map(
        "copy",
        command="files.copy",
        items=lambda ctx: ctx.results["list"]["files"],
        payload=lambda ctx: {"bucket": ctx.results["list"]["bucket"]},
        compensation=None,
        concurrency=2,
        retry=ONCE,
    )
    run = Run(s)
    run.succeed({"files": ["a", "b", "c"], "bucket": "b-1"})
    sent = run.commands[-2:]
    assert [(c.step, c.item, c.payload) for c in sent] == [
        ("copy[0]", "a", {"bucket": "b-1"}),
        ("copy[1]", "b", {"bucket": "b-1"}),
    ]
    run.succeed({"ok": 1}, command=sent[0])
    assert (run.last.item, run.last.payload) == ("c", {"bucket": "b-1"})
    assert run.step("copy").payload == {"bucket": "b-1"}
    assert run.step("copy[2]").payload == "c"  # an item's row keeps its item


def test_a_raising_payload_function_fails_the_step_unsent_and_compensates() -> None:
    run = Run(reserve_then_charge(lambda ctx: ctx.results["nope"]))
    run.succeed({"id": "r-1"})
    assert ("action", "charge") not in run.sent
    charge = run.step("charge")
    assert charge.status == StepStatus.FAILED and charge.attempt == 0
    assert charge.error is not None
    assert charge.error["type"] == "payload_failed" and charge.error["retryable"] is False
    assert "step 'charge'" in charge.error["message"]
    assert "KeyError: 'nope'" in charge.error["message"]
    assert run.detail("step_failed", "charge")["error"] == charge.error
    assert run.sent[-1] == ("compensation", "reserve")  # no retry loop: undo at once
    assert run.status() == SagaStatus.COMPENSATING


def test_a_payload_that_is_not_a_json_object_fails_the_step() -> None:
    for bad, says in (
        (lambda ctx: ["a", "list"], "returned list, not a dict"),
        (lambda ctx: {"amount": float("nan")}, "ValueError"),
        (lambda ctx: {"at": object()}, "TypeError"),
    ):
        run = Run(reserve_then_charge(bad))
        run.succeed({"id": "r-1"})
        error = run.step("charge").error
        assert error is not None and error["type"] == "payload_failed", bad
        assert says in error["message"]


def test_past_the_pivot_a_failing_payload_parks_and_a_retry_builds_it_again() -> None:
    calls: list[int] = []

    def flaky(ctx: GuardContext) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not yet")
        return {"charge": ctx.results["charge"]}

    s = shop()
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote("notify", command="mail.send", retry=ONCE, payload=flaky)
    run = Run(s)
    run.succeed({"id": "c-1"})
    assert run.status() == SagaStatus.FAILED
    assert run.state.error is not None and run.state.error["step"] == "notify"
    run.retry()
    assert run.last.step == "notify" and run.last.payload == {"charge": {"id": "c-1"}}
    assert len(calls) == 2


def test_a_payload_after_an_operators_skip_sees_the_result_given() -> None:
    s = shop()
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    s.remote("invoice", command="billing.invoice", retry=ONCE)
    s.remote("notify", command="mail.send", retry=ONCE, payload=lambda ctx: ctx.results)
    run = Run(s)
    run.succeed({"id": "c-1"})
    run.fail("down", retryable=False)  # invoice: parked
    run.skip("invoice", result={"invoice": "i-7"})
    assert run.last.payload == {"charge": {"id": "c-1"}, "invoice": {"invoice": "i-7"}}


def test_the_command_body_carries_the_payload_and_no_item() -> None:
    run = Run(reserve_then_charge(with_reservation))
    run.succeed({"id": "r-2"})
    body = json.loads(run.last.model_dump_json())
    assert body["payload"] == {"n": 1, "reservation": "r-2"} and body["item"] is None
