"""Running a local step's real function for a command, as `saga worker` does: it gets a
`StepContext`, its model result is dumped to JSON, and an exception is a failure reply."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from orchestrator.messages import Command, ReplyError
from orchestrator.saga import Saga
from orchestrator.steps import LocalHandler
from orchestrator.testing.answers import Answer


def local_function(definition: Saga, command: Command) -> LocalHandler | None:
    """The function of the local step (or compensation) `command` is for, if any."""
    for step in definition.steps:
        if not step.local:
            continue
        if command.kind == "action" and command.command == step.command:
            return step.handler
        if command.kind == "compensation" and command.command == step.compensation:
            return step.compensation_handler
    return None


def call_local(definition: Saga, fn: LocalHandler, command: Command) -> Answer:
    """Run `fn` for `command` and turn what it did into an answer. An exception with
    `type` and `retryable` attributes (the participant SDK's `StepFailed`) is a failure of
    that type; any other is a retryable failure named after its class."""
    ctx = definition.step_context(command)
    try:
        result = _run(fn(ctx))
    except Exception as exc:
        error = ReplyError(
            type=str(getattr(exc, "type", type(exc).__name__)),
            message=str(getattr(exc, "message", "") or exc),
            retryable=bool(getattr(exc, "retryable", True)),
        )
        return Answer("failure", error=error)
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    return Answer("success", result=result)


def _run(awaitable: Awaitable[Any]) -> Any:
    """Await `awaitable` from synchronous code, also when called inside a running event loop
    (an async test): then it runs on its own loop in a worker thread."""

    async def wait() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, wait()).result()
