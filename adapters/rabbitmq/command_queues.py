"""Whether every command queue the loaded sagas send to has a consumer.

A command whose queue nobody consumes is never answered: each attempt waits for its timeout,
the saga compensates (whose commands may wait the same way) and parks minutes later, and the
messages stay in the queue. A misspelled service (`hotel.book` where the participant serves
`hotels`) looks exactly like that. So `saga run` counts each queue's consumers with a passive
declare, logs `command_queue_unconsumed` for each queue without one (again at every check
while it stays so) and `command_queue_consumed` once one appears, reports the counts (the
gauge saga_command_queue_consumers), and hands the engine the commands concerned: their
timeout errors then name the queue (orchestrator/transition/timers.py).

Child-saga steps send no command to a queue and are not checked; local steps are, on
`commands.local`, which `saga worker` consumes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import ChannelNotFoundEntity

from adapters.rabbitmq.topology import Topology, service_of
from orchestrator.registry import Registry

log = structlog.get_logger(__name__)

LOCAL_SERVICE = "local"  # the service of `local.<saga>.<step>`: `saga worker`

Report = Callable[[str, int], None]
"""Told (queue, consumers) for every queue at every check."""


@dataclass(frozen=True)
class CommandQueue:
    """One participant service's command queue and who sends to it."""

    service: str
    queue: str  # the broker's name (prefixed)
    commands: frozenset[str]
    senders: frozenset[tuple[str, str]]  # (saga, step)

    def hint(self) -> str:
        if self.service == LOCAL_SERVICE:
            return "is `saga worker` running with these SAGA_MODULES?"
        return (
            f"is a participant for service {self.service!r} running? a typo in the command "
            f"name ({', '.join(sorted(self.commands))})?"
        )


def command_queues(registry: Registry, topology: Topology) -> list[CommandQueue]:
    """The command queues `registry`'s sagas send to, by service name."""
    commands: dict[str, set[str]] = {}
    senders: dict[str, set[tuple[str, str]]] = {}
    for command, sent_by in registry.command_senders().items():
        service = service_of(command)
        commands.setdefault(service, set()).add(command)
        senders.setdefault(service, set()).update(sent_by)
    return [
        CommandQueue(
            service,
            topology.name(topology.command_queue(service)),
            frozenset(commands[service]),
            frozenset(senders[service]),
        )
        for service in sorted(commands)
    ]


class CommandQueueWatch:
    """Counts the consumers of the command queues at each `check`, and remembers which had
    none at the last one."""

    def __init__(
        self, registry: Registry, topology: Topology, report: Report = lambda _q, _n: None
    ) -> None:
        self.queues = command_queues(registry, topology)
        self.report = report
        self._unconsumed: list[CommandQueue] = []

    async def check(self, connection: AbstractRobustConnection) -> None:
        """Count every queue's consumers now; log what has none, and what has one again."""
        before = {q.queue for q in self._unconsumed}
        unconsumed = []
        channel: AbstractChannel = await connection.channel()
        try:
            for queue in self.queues:
                consumers, channel = await _consumers(connection, channel, queue.queue)
                self.report(queue.queue, consumers)
                if consumers == 0:
                    unconsumed.append(queue)
                    log.warning(
                        "command_queue_unconsumed",
                        queue=queue.queue,
                        service=queue.service,
                        sagas=sorted({saga for saga, _ in queue.senders}),
                        steps=sorted(f"{saga}.{step}" for saga, step in queue.senders),
                        hint=queue.hint(),
                    )
                elif queue.queue in before:
                    log.info(
                        "command_queue_consumed",
                        queue=queue.queue,
                        service=queue.service,
                        consumers=consumers,
                    )
        finally:
            if not channel.is_closed:
                await channel.close()
        self._unconsumed = unconsumed

    def unconsumed_queues(self) -> list[str]:
        """The queues that had no consumer at the last check (none before the first)."""
        return [q.queue for q in self._unconsumed]

    def unconsumed_commands(self) -> Mapping[str, str]:
        """command -> its queue, for the queues without a consumer at the last check."""
        return {command: q.queue for q in self._unconsumed for command in q.commands}


async def _consumers(
    connection: AbstractRobustConnection, channel: AbstractChannel, queue: str
) -> tuple[int, AbstractChannel]:
    """The queue's consumer count, and the channel to go on with: a passive declare of a
    queue that does not exist (deleted since start-up) closes its channel, and counts 0."""
    try:
        declared = await channel.declare_queue(queue, passive=True)
    except ChannelNotFoundEntity:
        with contextlib.suppress(Exception):
            await channel.close()  # or the robust channel reopens itself
        return 0, await connection.channel()
    return declared.declaration_result.consumer_count or 0, channel
