"""Hosting participants in a process: `saga worker` (local steps) and the example shop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from adapters.faults import fault_hook
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.participant import ParticipantWorker
from adapters.rabbitmq.topology import Topology
from adapters.runtime import utcnow
from adapters.settings import Settings
from orchestrator.definition import LocalHandler, StepContext
from orchestrator.messages import Command
from orchestrator.participant import Participant, StepFailed
from orchestrator.registry import Registry

log = structlog.get_logger(__name__)


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
        ctx = StepContext(
            saga_id=str(cmd.saga_id),
            saga=cmd.saga,
            step=cmd.step,
            kind=cmd.kind,
            attempt=cmd.attempt,
            idempotency_key=cmd.idempotency_key,
            input=saga.input.model_validate(cmd.payload),
            payload=cmd.payload,
        )
        result = await fn(ctx)
        return result.model_dump(mode="json") if hasattr(result, "model_dump") else result

    return run


async def serve(settings: Settings, participants: Sequence[Participant]) -> None:
    """Consume the participants' queues until SIGINT/SIGTERM. `settings.fault` (SAGA_FAULT)
    arms a crash point for tests (`adapters.faults`)."""
    faults = fault_hook(settings.fault)  # before connecting: a bad spec fails at once
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    connection = await connect(settings.amqp_url)
    topology = Topology(settings.amqp_prefix)
    workers = []
    try:
        for participant in participants:
            channel = await open_channel(connection)
            worker = ParticipantWorker(
                participant,
                channel,
                topology,
                clock=utcnow,
                prefetch=settings.prefetch,
                detach_after=settings.detach_after,
                max_detached=settings.max_detached,
                faults=faults,
                max_message_bytes=settings.max_message_bytes,
            )
            await worker.start()
            workers.append(worker)
        log.info("participants_started", services=[p.service for p in participants])
        await stop.wait()
    finally:
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.stop()
        await connection.close()
