"""Child sagas in the pure machine: a child step's dispatch is a start of the child, its undo
a cancel with a parent reference; a child answers its parent when it ends; an undo of a
completed child compensates it."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from orchestrator.machine import ReplyReceived, UndoRequested
from orchestrator.messages import CancelSaga, ParentRef, Reply, StartSaga
from orchestrator.state import SagaStatus, StepStatus
from orchestrator.testing import SAGA_ID
from tests.unit.builders import ONCE, Run, shop

PARENT = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


def parent_saga(**child: Any) -> Run:
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", retry=ONCE)
    s.child("ship", saga="shipment", **child)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    return Run(s, input={"n": 3, "flag": True})


def child_saga(parent: ParentRef | None = None) -> Run:
    s = shop()
    s.remote("book", command="fleet.book", compensation="fleet.unbook", retry=ONCE)
    s.remote("label", command="fleet.label", retry=ONCE, compensation=None)
    run = Run(s)
    run.state = replace(run.state, parent=parent)
    return run


def ref(kind: str = "action") -> ParentRef:
    return ParentRef(saga_id=PARENT, step="ship", command_id=uuid.uuid4(), kind=kind)


def test_a_child_step_starts_the_child_with_a_parent_reference() -> None:
    run = parent_saga(input=lambda ctx: {"order": ctx.input["n"]})
    decision = run.succeed()
    ((routing_key, start),) = decision.requests
    assert routing_key == "start" and isinstance(start, StartSaga)
    assert start.saga == "shipment" and start.key == f"{SAGA_ID}:ship"
    assert start.input == {"order": 3}
    assert start.parent is not None and start.parent.command_id == run.step("ship").command_id
    assert not decision.commands  # nothing for a participant queue
    assert run.step("ship").payload == {"order": 3}


def test_without_input_the_child_gets_the_parents_input() -> None:
    run = parent_saga()
    ((_, start),) = run.succeed().requests
    assert isinstance(start, StartSaga) and start.input == {"n": 3, "flag": True}


def test_a_failing_input_function_fails_the_step_unsent() -> None:
    run = parent_saga(input=lambda ctx: 1 / 0)
    decision = run.succeed()
    assert not decision.requests
    assert run.status() == SagaStatus.COMPENSATING
    error = run.step("ship").error
    assert error is not None and error["type"] == "child_input_failed"


def test_compensating_the_step_sends_an_undo_that_the_child_answers() -> None:
    run = parent_saga()
    start = run.succeed().requests[0][1]
    assert isinstance(start, StartSaga) and start.parent is not None
    answer = Reply(
        command_id=start.parent.command_id,
        saga_id=SAGA_ID,
        step="ship",
        outcome="success",
        result={"book": {"truck": 1}},
    )
    run.feed(ReplyReceived(answer))
    assert run.last.step == "charge"
    run.fail("declined", retryable=False)  # charge
    ((routing_key, undo),) = [r for d in run.decisions[-1:] for r in d.requests]
    assert routing_key == "cancel" and isinstance(undo, CancelSaga)
    assert undo.parent is not None and undo.parent.kind == "compensation"
    assert run.step("ship").status == StepStatus.COMPENSATING


def test_cancelling_the_parent_cancels_a_running_child() -> None:
    run = parent_saga()
    run.succeed()
    decision = run.cancel("changed my mind")
    ((routing_key, cancel),) = decision.requests
    assert routing_key == "cancel" and isinstance(cancel, CancelSaga)
    assert cancel.parent is None and "changed my mind" in cancel.reason
    assert run.status() == SagaStatus.COMPENSATING  # waits for the child to answer


def test_a_child_answers_its_parent_when_it_ends() -> None:
    parent = ref()
    run = child_saga(parent)
    run.succeed({"truck": 1})
    decision = run.succeed({"label": "L"})
    (reply,) = decision.replies
    assert reply.command_id == parent.command_id and reply.saga_id == PARENT
    assert reply.outcome == "success"
    assert reply.result == {"book": {"truck": 1}, "label": {"label": "L"}}


def test_a_compensated_child_answers_with_a_failure() -> None:
    run = child_saga(ref())
    run.succeed()
    run.fail("no label", retryable=False)
    decision = run.succeed()  # unbook
    (reply,) = decision.replies
    assert reply.outcome == "failure" and reply.error is not None
    assert reply.error.type == "child_compensated" and not reply.error.retryable


def test_an_undo_of_a_completed_child_compensates_it_and_answers_the_undo() -> None:
    run = child_saga(ref())
    run.succeed()
    run.succeed()
    assert run.status() == SagaStatus.COMPLETED
    undo = ref("compensation")
    run.feed(UndoRequested("parent failed", undo))
    assert run.status() == SagaStatus.COMPENSATING
    assert run.sent[-1] == ("compensation", "book")
    (reply,) = run.succeed().replies
    assert run.status() == SagaStatus.CANCELLED
    assert reply.command_id == undo.command_id and reply.outcome == "success"


def test_an_undo_of_an_undone_child_is_answered_at_once() -> None:
    run = child_saga(ref())
    run.fail("no truck", retryable=False)
    assert run.status() == SagaStatus.COMPENSATED
    undo = ref("compensation")
    (reply,) = run.feed(UndoRequested("parent failed", undo)).replies
    assert reply.command_id == undo.command_id and reply.outcome == "success"


def test_a_parked_child_does_not_answer_yet() -> None:
    s = shop()
    s.remote("book", command="fleet.book", pivot=True, retry=ONCE)
    s.remote("label", command="fleet.label", retry=ONCE)
    run = Run(s)
    run.state = replace(run.state, parent=ref())
    run.succeed()
    decision = run.fail("printer", retryable=False)
    assert run.status() == SagaStatus.FAILED and not decision.replies
