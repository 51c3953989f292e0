"""What steps give back: a declared result model (`result=`) a success reply must validate, the
action's result handed to its compensation (`action_result`), and the saga's output
(`output=`) stored and sent as the completed event's result."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, RootModel

from orchestrator.definition import GuardContext, Saga
from orchestrator.machine import ReplyReceived
from orchestrator.messages import ParentRef, Reply
from orchestrator.retry import Retry
from orchestrator.state import SagaStatus, StepStatus
from tests.unit.builders import ONCE, Run, shop


class Reserved(BaseModel):
    reservation_id: int
    lines: int


def reserve_and_charge(**reserve: Any) -> Saga:
    """reserve (compensatable, `reserve` options) -> charge (pivot)."""
    s = shop(**reserve.pop("saga", {}))
    options: dict[str, Any] = {"retry": ONCE, **reserve}
    s.remote("reserve", command="stock.reserve", compensation="stock.release", **options)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    return s


# -- result= ------------------------------------------------------------------------------


def test_a_result_that_validates_is_stored_as_received() -> None:
    run = Run(reserve_and_charge(result=Reserved))
    received = {"reservation_id": "12", "lines": 2, "note": "kept"}
    run.succeed(received)
    assert run.step("reserve").status == StepStatus.SUCCEEDED
    assert run.step("reserve").result == received  # not the model's dump
    assert run.last.step == "charge"


def test_a_result_that_fails_the_model_fails_the_step_for_good_and_undoes_it() -> None:
    run = Run(reserve_and_charge(result=Reserved, retry=Retry(max_attempts=5)))
    run.succeed({"reservation": 7, "secret": "s3cr3t"})
    step = run.step("reserve")
    assert step.status == StepStatus.COMPENSATING and step.error is not None  # failed, undone
    assert step.error["type"] == "invalid_result" and step.error["retryable"] is False
    message = step.error["message"]
    assert message.startswith("the result does not match Reserved: ")
    assert "reservation_id: Field required" in message and "lines: Field required" in message
    assert "s3cr3t" not in message  # names the fields, never their values
    assert run.sent.count(("action", "reserve")) == 1  # no retry
    assert run.detail("step_failed", "reserve")["error"] == step.error
    # It acted (it replied success): it is undone, and its undo sees what it said.
    undo = run.last
    assert (undo.kind, undo.step) == ("compensation", "reserve")
    assert undo.action_result == {"reservation": 7, "secret": "s3cr3t"}
    assert run.status() == SagaStatus.COMPENSATING


def test_a_long_validation_message_is_cut_short() -> None:
    class Wide(BaseModel):
        fields: dict[str, int]

    run = Run(reserve_and_charge(result=Wide))
    run.succeed({"fields": {f"f{n:04d}": "x" for n in range(300)}})
    error = run.step("reserve").error
    assert error is not None and len(error["message"]) == 1000
    assert error["message"].endswith("…")


def test_each_map_item_is_checked_against_the_model() -> None:
    s = shop()
    s.map(
        "copy",
        command="files.copy",
        items=lambda ctx: ["a", "b"],
        result=Reserved,
        compensation="files.delete",
        retry=ONCE,
    )
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    first, second = run.commands
    run.succeed({"reservation_id": 1, "lines": 1}, command=first)
    run.succeed({"reservation_id": "x", "lines": 1}, command=second)
    error = run.step("copy[1]").error
    assert error is not None and error["type"] == "invalid_result"
    assert "reservation_id: Input should be a valid integer" in error["message"]
    undone = {c.step: c.action_result for c in run.commands if c.kind == "compensation"}
    assert undone == {
        "copy[0]": {"reservation_id": 1, "lines": 1},
        "copy[1]": {"reservation_id": "x", "lines": 1},
    }


def test_typed_access_to_an_earlier_result() -> None:
    def build(ctx: GuardContext) -> dict[str, Any]:
        return {"undo": ctx.result("reserve", Reserved).reservation_id}

    s = reserve_and_charge(result=Reserved)
    s.remote("notify", command="mail.send", retry=ONCE, payload=build)
    run = Run(s)
    run.succeed({"reservation_id": "41", "lines": 1})
    run.succeed({"charged": 1})
    assert run.last.payload == {"undo": 41}


# -- action_result --------------------------------------------------------------------------


def test_a_compensation_carries_its_actions_result() -> None:
    run = Run(reserve_and_charge(result=Reserved))
    run.succeed({"reservation_id": 3, "lines": 1})
    run.fail("declined", retryable=False)  # charge
    undo = run.last
    assert (undo.kind, undo.step) == ("compensation", "reserve")
    assert undo.action_result == {"reservation_id": 3, "lines": 1}
    assert json.loads(undo.model_dump_json())["action_result"] == {"reservation_id": 3, "lines": 1}
    assert run.commands[0].action_result is None  # an action carries none


def test_the_undo_of_a_timed_out_action_carries_no_result_and_leaves_the_field_out() -> None:
    run = Run(reserve_and_charge(result=Reserved))
    run.when_due()  # reserve never answered: it may have acted, so it is undone
    undo = run.last
    assert (undo.kind, undo.step) == ("compensation", "reserve")
    assert undo.action_result is None
    assert "action_result" not in json.loads(undo.model_dump_json())


def test_the_undo_of_an_action_that_replied_no_result_leaves_the_field_out() -> None:
    s = shop()
    s.remote("reserve", command="stock.reserve", compensation="stock.release", result=Nothing)
    s.remote("charge", command="payments.charge", pivot=True, retry=ONCE)
    run = Run(s)
    run.feed(ReplyReceived(_reply(run, result=None)))
    run.fail("declined", retryable=False)
    assert run.last.kind == "compensation"
    assert "action_result" not in json.loads(run.last.model_dump_json())


def test_without_a_declared_result_a_compensation_carries_none() -> None:
    # Participants on an SDK that refuses unknown command fields keep taking every command
    # of a step that does not declare result=.
    run = Run(reserve_and_charge())
    run.succeed({"reservation_id": 3, "lines": 1})
    run.fail("declined", retryable=False)
    assert run.last.kind == "compensation" and run.last.action_result is None
    assert "action_result" not in json.loads(run.last.model_dump_json())


class Nothing(RootModel[None]):
    """A result that is null."""


def _reply(run: Run, **fields: Any) -> Reply:
    cmd = run.last
    return Reply(
        command_id=cmd.command_id, saga_id=cmd.saga_id, step=cmd.step, outcome="success", **fields
    )


# -- output= --------------------------------------------------------------------------------


def charge_id(ctx: GuardContext) -> dict[str, Any]:
    return {"order": ctx.input["n"], "charge": ctx.results["charge"]["id"]}


def test_the_output_is_stored_and_is_the_completed_events_result() -> None:
    run = Run(reserve_and_charge(saga={"output": charge_id}), input={"n": 5})
    run.succeed({"reservation_id": 1})
    decision = run.succeed({"id": "c-5"})
    assert run.status() == SagaStatus.COMPLETED
    assert run.state.output == {"order": 5, "charge": "c-5"}
    (event,) = decision.events
    assert event.status == "completed" and event.result == {"order": 5, "charge": "c-5"}


def test_without_output_the_event_carries_every_result_and_nothing_is_stored() -> None:
    run = Run(reserve_and_charge())
    run.succeed({"reservation_id": 1})
    (event,) = run.succeed({"id": "c-5"}).events
    assert event.result == {"reserve": {"reservation_id": 1}, "charge": {"id": "c-5"}}
    assert run.state.output is None


def test_a_failing_output_still_completes_without_an_output() -> None:
    def broken(ctx: GuardContext) -> dict[str, Any]:
        return {"charge": ctx.results["missing"]}

    run = Run(reserve_and_charge(saga={"output": broken}))
    run.succeed({"reservation_id": 1})
    decision = run.succeed({"id": "c-5"})
    assert run.status() == SagaStatus.COMPLETED and run.state.output is None
    assert [h.event for h in decision.history][-2:] == ["output_failed", "saga_completed"]
    error = run.detail("output_failed")["error"]
    assert error["type"] == "output_failed" and "KeyError: 'missing'" in error["message"]
    (event,) = decision.events
    assert event.status == "completed" and event.result is None
    assert not [c for c in run.commands if c.kind == "compensation"]


def test_an_output_that_is_not_a_json_object_fails_the_same_way() -> None:
    run = Run(reserve_and_charge(saga={"output": lambda ctx: [1]}))
    run.succeed({"reservation_id": 1})
    run.succeed({"id": "c-5"})
    assert run.status() == SagaStatus.COMPLETED and run.state.output is None
    assert "not a dict" in run.detail("output_failed")["error"]["message"]


def test_a_child_answers_its_parent_with_its_output() -> None:
    run = Run(reserve_and_charge(saga={"output": charge_id}), input={"n": 2})
    parent = ParentRef(
        saga_id=run.state.saga_id, step="ship", command_id=run.last.command_id, kind="action"
    )
    run.state = replace(run.state, parent=parent)
    run.succeed({"reservation_id": 1})
    (answer,) = run.succeed({"id": "c-2"}).replies
    assert answer.outcome == "success" and answer.result == {"order": 2, "charge": "c-2"}
