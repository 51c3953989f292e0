"""Map steps (dynamic fan-out): one command per item of a list computed from the saga, at most
`concurrency` in flight, results gathered in item order; a failed item has the items that
succeeded compensated, then the earlier steps."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.definition import GuardContext, Saga
from orchestrator.errors import DefinitionError
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, TWICE, Run, shop


def chunks(ctx: GuardContext) -> list[Any]:
    return [{"from": i * 10, "to": i * 10 + 10} for i in range(int(ctx.input["n"]))]


def report(
    *, concurrency: int = 2, retry: Retry = ONCE, after_pivot: bool = False, **map_options: Any
) -> Saga:
    """open -> summarise[*] -> publish (pivot); or open -> publish (pivot) -> summarise[*]."""
    s = shop()
    s.remote("open", command="reports.open", compensation="reports.drop", retry=ONCE)
    if after_pivot:
        s.remote("publish", command="reports.publish", pivot=True, retry=ONCE)
    options: dict[str, Any] = {"items": chunks, "concurrency": concurrency, "retry": retry}
    if not after_pivot:
        options["compensation"] = "reports.discard"
    s.map("summarise", command="reports.summarise", **(options | map_options))
    if not after_pivot:
        s.remote("publish", command="reports.publish", pivot=True, retry=ONCE)
    return s


def test_items_are_dispatched_up_to_the_concurrency_and_results_gathered_in_order() -> None:
    run = Run(report(concurrency=2), input={"n": 5})
    run.succeed()  # open
    assert run.sent[-2:] == [("action", "summarise[0]"), ("action", "summarise[1]")]
    assert [c.item for c in run.commands[-2:]] == [{"from": 0, "to": 10}, {"from": 10, "to": 20}]
    first, second = run.commands[-2:]
    run.succeed({"rows": 1}, command=second)
    assert run.last.step == "summarise[2]"  # a slot freed: the next item goes
    third = run.last
    run.succeed({"rows": 0}, command=first)
    run.succeed({"rows": 2}, command=third)
    for step in ("summarise[3]", "summarise[4]"):
        run.succeed({"rows": 9}, command=run.last_for(step))
    assert run.last.step == "publish"
    assert run.state.results()["summarise"] == [{"rows": n} for n in (0, 1, 2, 9, 9)]
    assert "summarise[0]" not in run.state.results()
    assert run.detail("map_started", "summarise") == {"items": 5, "concurrency": 2}


def test_never_more_items_in_flight_than_the_concurrency() -> None:
    run = Run(report(concurrency=3), input={"n": 10})
    run.succeed()
    while run.last.step != "publish":
        running = [s for s in run.state.steps if s.item is not None and s.in_flight]
        assert 1 <= len(running) <= 3
        run.succeed(command=run.last_for(running[0].name))
    assert len(run.state.results()["summarise"]) == 10


def test_a_failed_item_compensates_the_items_that_succeeded_then_the_earlier_steps() -> None:
    run = Run(report(concurrency=2), input={"n": 4})
    run.succeed()
    zero, one = run.commands[-2:]
    run.succeed(command=zero)
    two = run.last
    run.fail("bad chunk", retryable=False, command=one)
    assert run.status() == SagaStatus.COMPENSATING
    assert run.last == two  # item 2 is in flight: wait for it
    run.succeed(command=two)
    assert sorted(run.sent[-2:]) == [
        ("compensation", "summarise[0]"),
        ("compensation", "summarise[2]"),
    ]
    assert [c.item for c in run.commands[-2:]] == [{"from": 20, "to": 30}, {"from": 0, "to": 10}]
    for cmd in run.commands[-2:]:
        run.succeed(command=cmd)
    assert run.sent[-1] == ("compensation", "open")
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATED
    statuses = run.statuses()
    assert statuses["summarise[3]"] == StepStatus.PENDING  # never sent, nothing to undo
    assert statuses["summarise"] == StepStatus.FAILED
    assert run.state.error is not None and run.state.error["step"] == "summarise[1]"


def test_item_compensations_respect_the_concurrency() -> None:
    run = Run(report(concurrency=2), input={"n": 4})
    run.succeed()
    for n in range(4):
        run.succeed(command=run.last_for(f"summarise[{n}]"))
    run.fail("publish refused", retryable=False)  # the pivot failed
    assert run.sent[-2:] == [("compensation", "summarise[3]"), ("compensation", "summarise[2]")]
    run.succeed(command=run.last_for("summarise[2]"))
    assert run.sent[-1] == ("compensation", "summarise[1]")
    for n in (3, 1):
        run.succeed(command=run.last_for(f"summarise[{n}]"))
    assert run.sent[-1] == ("compensation", "summarise[0]")
    run.succeed()
    assert run.sent[-1] == ("compensation", "open")


def test_an_item_is_retried_alone() -> None:
    run = Run(report(retry=TWICE), input={"n": 2})
    run.succeed()
    zero, one = run.commands[-2:]
    run.fail("flaky", command=one)
    run.when_due()
    assert run.last.step == "summarise[1]" and run.last.attempt == 2
    assert run.last.item == {"from": 10, "to": 20}
    run.succeed(command=zero)
    run.succeed()
    assert run.last.step == "publish"


def test_an_empty_list_succeeds_at_once() -> None:
    run = Run(report(), input={"n": 0})
    run.succeed()
    assert run.last.step == "publish"
    assert run.state.results()["summarise"] == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (lambda ctx: 7, "not a list"),
        (lambda ctx: [object()], "not JSON serializable"),
        (lambda ctx: [1, 2, 3], "more than max_items=2"),
        (lambda ctx: 1 / 0, "ZeroDivisionError"),
    ],
)
def test_bad_items_fail_the_step_without_sending_anything(items: Any, message: str) -> None:
    run = Run(report(items=items, max_items=2), input={"n": 1})
    run.succeed()
    assert run.status() == SagaStatus.COMPENSATING
    error = run.step("summarise").error
    assert error is not None and message in error["message"]
    assert all(c.step != "summarise" and "[" not in c.step for c in run.commands)


def test_an_item_failing_past_the_pivot_parks_and_a_retry_sends_it_again() -> None:
    run = Run(report(after_pivot=True, concurrency=5), input={"n": 3})
    run.succeed()
    run.succeed()  # publish
    zero, one, two = run.commands[-3:]
    run.fail("disk full", command=one)
    assert run.status() == SagaStatus.FAILED
    assert run.step("summarise").status == StepStatus.RUNNING
    run.succeed(command=zero)
    run.retry()
    assert run.sent[-1] == ("action", "summarise[1]")
    run.succeed()
    run.succeed(command=two)
    assert run.status() == SagaStatus.COMPLETED


def test_a_parked_item_can_be_skipped_with_a_result() -> None:
    run = Run(report(after_pivot=True, concurrency=5), input={"n": 2})
    run.succeed()
    run.succeed()
    zero, one = run.commands[-2:]
    run.succeed({"rows": 4}, command=zero)
    run.fail("disk full", command=one)
    run.skip("summarise[1]", {"rows": 0})
    assert run.status() == SagaStatus.COMPLETED
    assert run.state.results()["summarise"] == [{"rows": 4}, {"rows": 0}]


def test_cancel_while_mapping_undoes_the_items_done() -> None:
    run = Run(report(concurrency=1), input={"n": 3})
    run.succeed()
    run.succeed()  # item 0
    run.cancel()
    assert run.status() == SagaStatus.COMPENSATING
    run.succeed()  # item 1 was in flight
    assert run.sent[-1] == ("compensation", "summarise[1]")  # one at a time, as it ran
    run.succeed()
    assert run.sent[-1] == ("compensation", "summarise[0]")
    run.succeed()
    assert run.sent[-1] == ("compensation", "open")


def test_map_options_are_checked_and_fingerprinted() -> None:
    s = shop()
    with pytest.raises(DefinitionError, match="concurrency"):
        s.map("m", command="svc.m", items=chunks, concurrency=0, compensation=None)
    with pytest.raises(DefinitionError, match="items="):
        s.map("m", command="svc.m", items=[1, 2], compensation=None)  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="map step fans out"), s.parallel():
        s.map("m", command="svc.m", items=chunks, compensation=None)
    assert report(concurrency=2).fingerprint != report(concurrency=3).fingerprint
