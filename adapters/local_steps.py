"""The local steps of the loaded sagas as one participant, which `saga worker` hosts: each
command runs the function of the saga version its saga started on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from adapters.participant.core import Participant, StepFailed
from orchestrator.messages import Command
from orchestrator.registry import Registry
from orchestrator.steps import LocalHandler


def local_steps(registry: Registry) -> Participant:
    """A participant serving every local step (and its compensation) of the loaded sagas.
    A command runs the function of the version its saga started on (`command.version`)."""
    functions: dict[str, dict[int, LocalHandler]] = {}
    for saga in registry.all():
        for step in saga.steps:
            if step.local and step.command and step.handler is not None:
                functions.setdefault(step.command, {})[saga.version] = step.handler
            if step.compensation and step.compensation_handler is not None:
                functions.setdefault(step.compensation, {})[saga.version] = (
                    step.compensation_handler
                )
    participant = Participant("local")
    for command, versions in functions.items():
        participant.handler(command)(_bind(registry, versions))
    return participant


def _bind(
    registry: Registry, versions: dict[int, LocalHandler]
) -> Callable[[Command], Awaitable[Any]]:
    async def run(cmd: Command) -> Any:
        # A command without a version (an older sender) runs the newest function; one for a
        # version this worker lacks fails retryably: a worker that has it may take the retry.
        version = max(versions) if cmd.version is None else cmd.version
        fn = versions.get(version)
        if fn is None:
            raise StepFailed(
                "version_not_loaded",
                f"this worker does not load saga {cmd.saga!r} v{version}; keep that version "
                "in SAGA_MODULES until its sagas finish",
                retryable=True,
            )
        saga = registry.get(cmd.saga, version)
        ctx = saga.step_context(cmd)
        result = await fn(ctx)
        return result.model_dump(mode="json") if hasattr(result, "model_dump") else result

    return run
