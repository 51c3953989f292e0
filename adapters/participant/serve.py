"""Hosting participants in a process until it is told to stop: the example shop, `saga worker`
(the local steps), a team's own service."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog

from adapters.faults import FaultyParticipant, fault_hook
from adapters.participant.core import Participant
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings

log = structlog.get_logger(__name__)


async def serve(settings: Settings, participants: Sequence[Participant]) -> None:
    """Consume the participants' queues until SIGINT/SIGTERM. `settings.fault` (SAGA_FAULT)
    arms a crash point for tests (`adapters.faults`)."""
    hit = fault_hook(settings.fault)  # before connecting: a bad spec fails at once
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
                participant if hit is None else FaultyParticipant(participant, hit),
                channel,
                topology,
                clock=lambda: datetime.now(UTC),
                prefetch=settings.prefetch,
                detach_after=settings.detach_after,
                max_detached=settings.max_detached,
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
