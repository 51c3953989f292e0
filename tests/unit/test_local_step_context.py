"""What a local step function is given (`StepContext`): the saga's validated input, or with
`payload=` the payload its command carries instead; in a compensation, its action's result."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest

from adapters.local_steps import local_steps
from orchestrator.definition import Saga, StepContext
from orchestrator.messages import Command
from orchestrator.registry import Registry
from orchestrator.testing.local_calls import call_local, local_function
from tests.unit.builders import Input

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
seen: list[StepContext] = []

files = Saga("files", version=1, input=Input)


async def remember(ctx: StepContext) -> dict[str, Any]:
    seen.append(ctx)
    return {"ok": True}


files.local("open", compensate=remember)(remember)
files.local("copy", compensate=None, payload=lambda ctx: {"from": ctx.results["open"]})(remember)


def command(
    step: str, kind: Literal["action", "compensation"], payload: dict[str, Any], **fields: Any
) -> Command:
    suffix = ".compensate" if kind == "compensation" else ""
    return Command(
        command_id=uuid.uuid4(),
        saga_id=uuid.uuid4(),
        saga="files",
        step=step,
        kind=kind,
        attempt=1,
        idempotency_key=f"x:{step}:{kind}",
        payload=payload,
        expires_at=NOW + timedelta(seconds=30),
        version=1,
        command=f"local.files.{step}{suffix}",
        **fields,
    )


async def run(cmd: Command) -> StepContext:
    seen.clear()
    reply = await local_steps(Registry([files])).handle(cmd, NOW)
    assert reply.outcome == "success", reply.error
    (ctx,) = seen
    return ctx


async def test_a_step_without_payload_gets_the_validated_input() -> None:
    ctx = await run(command("open", "action", {"n": 3, "flag": False}))
    assert ctx.input == Input(n=3, flag=False) and ctx.payload == {"n": 3, "flag": False}
    assert ctx.action_result is None


async def test_a_compensation_gets_its_actions_result() -> None:
    undo = command("open", "compensation", {"n": 3}, action_result={"handle": 7})
    ctx = await run(undo)
    assert ctx.kind == "compensation" and ctx.action_result == {"handle": 7}


async def test_a_step_with_payload_gets_the_payload_and_no_input() -> None:
    ctx = await run(command("copy", "action", {"from": {"ok": True}}))
    assert ctx.payload == {"from": {"ok": True}} and ctx.saga_input is None
    with pytest.raises(AttributeError, match=r"step 'copy' has payload=.*read ctx\.payload"):
        _ = ctx.input


@pytest.mark.parametrize(
    "cmd",
    [
        command("open", "action", {"n": 3, "flag": False}),
        command("open", "compensation", {"n": 3}, action_result={"handle": 7}),
        command("copy", "action", {"from": {"ok": True}}),
    ],
    ids=["input", "compensation", "payload"],
)
async def test_the_test_kit_gives_a_local_step_the_context_the_worker_gives(cmd: Command) -> None:
    by_worker = await run(cmd)
    seen.clear()
    fn = local_function(files, cmd)
    assert fn is not None
    answer = call_local(files, fn, cmd)
    assert answer.outcome == "success" and answer.result == {"ok": True}
    assert seen == [by_worker]
