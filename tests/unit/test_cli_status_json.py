"""`saga status --json` shows whose child a saga is, the item each map item step ran on, the
payloads steps built and the saga's output."""

from __future__ import annotations

import uuid
from dataclasses import replace

from adapters.saga_json import state_json
from orchestrator.messages import ParentRef
from tests.unit.builders import Run, shop
from tests.unit.test_machine_map import chunks


def test_status_json_names_the_parent_and_the_items() -> None:
    s = shop()
    s.map("summarise", command="reports.summarise", items=chunks, concurrency=1, compensation=None)
    run = Run(s, input={"n": 2})
    parent = ParentRef(saga_id=uuid.uuid4(), step="report", command_id=uuid.uuid4())
    shown = state_json(replace(run.state, parent=parent))
    assert shown["parent"] == parent.model_dump(mode="json")
    items = {step["name"]: step.get("item") for step in shown["steps"]}
    assert items == {
        "summarise": None,
        "summarise[0]": {"from": 0, "to": 10},
        "summarise[1]": {"from": 10, "to": 20},
    }


def test_status_json_shows_a_built_payload_and_the_output() -> None:
    s = shop(output=lambda ctx: {"done": sorted(ctx.results)})
    s.remote("charge", command="payments.charge", pivot=True)
    s.remote("notify", command="mail.send", payload=lambda ctx: {"n": ctx.input["n"]})
    run = Run(s, input={"n": 4})
    assert state_json(run.state)["output"] is None
    run.succeed({"id": 1})
    run.succeed({"sent": True})
    shown = state_json(run.state)
    assert [step.get("payload") for step in shown["steps"]] == [None, {"n": 4}]
    assert "payload" not in shown["steps"][0]
    assert shown["output"] == {"done": ["charge", "notify"]}
