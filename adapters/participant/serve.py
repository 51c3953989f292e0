"""Hosting participants in a process until it is told to stop: the example shop, `saga worker`
(the local steps), a team's own service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from adapters.clock import utcnow
from adapters.faults import FaultyParticipant, fault_hook
from adapters.participant.core import Participant
from adapters.participant.worker import ParticipantWorker
from adapters.postgres.dbclock import DatabaseClock, database_session
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from adapters.startup import patiently
from adapters.tracing.setup import enabled, require_sdk, tracer_provider

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy.ext.asyncio import AsyncEngine

    from adapters.participant.handler_spans import HandlerSpans

log = structlog.get_logger(__name__)


async def serve(
    settings: Settings,
    participants: Sequence[Participant],
    *,
    clock_database: AsyncEngine | None = None,
) -> None:
    """Consume the participants' queues until SIGINT/SIGTERM. `settings.fault` (SAGA_FAULT)
    arms a crash point for tests (`adapters.faults`).

    `clock_database`: the database whose clock says whether a command has expired (the
    barrier's, PostgreSQL); its clock is read before consuming and every 30 s after, and a
    host clock off it by more than SAGA_CLOCK_SKEW_MAX is logged (`clock_skew`). Without one,
    this host's clock: keep it synchronised (NTP)."""
    hit = fault_hook(settings.fault)  # before connecting: a bad spec fails at once
    provider, spans = _handler_spans(participants)  # so do misconfigured OTEL_* variables
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    clock: Callable[[], datetime] = utcnow
    database_clock = None
    if clock_database is not None:
        database_clock = DatabaseClock(
            database_session(clock_database), max_skew=settings.clock_skew_max
        )
        # Before connecting: a database it cannot read fails at once (or is waited for).
        await patiently("PostgreSQL", database_clock.sync, patience=settings.startup_patience)
        clock = database_clock
    connection = await patiently(
        "RabbitMQ", lambda: connect(settings.amqp_url), patience=settings.startup_patience
    )
    keeping = None if database_clock is None else asyncio.create_task(database_clock.keep(stop))
    topology = Topology(settings.amqp_prefix)

    def down() -> bool:
        return not connection.connected.is_set()

    workers = []
    try:
        for participant in participants:

            async def consuming(participant: Participant = participant) -> ParticipantWorker:
                worker = ParticipantWorker(
                    participant if hit is None else FaultyParticipant(participant, hit),
                    await open_channel(connection),
                    topology,
                    clock=clock,
                    prefetch=settings.prefetch,
                    detach_after=settings.detach_after,
                    max_detached=settings.max_detached,
                    max_message_bytes=settings.max_message_bytes,
                    spans=spans,
                )
                await worker.start()
                return worker

            # A connection reset meanwhile fails the step; the connection comes back by itself.
            workers.append(
                await patiently(
                    "RabbitMQ", consuming, patience=settings.startup_patience, down=down
                )
            )
        log.info("participants_started", services=[p.service for p in participants])
        await stop.wait()
    finally:
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.stop()
        await connection.close()
        if keeping is not None:
            stop.set()
            await keeping
        if provider is not None:  # exports what is still batched
            await asyncio.to_thread(provider.shutdown)


def _handler_spans(
    participants: Sequence[Participant],
) -> tuple[TracerProvider | None, HandlerSpans | None]:
    """A span around each handler when the `OTEL_*` variables turn spans on, made by the
    process's global tracer provider if the service set one up, else by one made from the
    variables, which becomes the global one: the handlers' own spans nest under ours."""
    if not enabled(os.environ):
        return None, None
    require_sdk(os.environ)
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from adapters.participant.handler_spans import SCOPE, HandlerSpans

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # the service set OpenTelemetry up itself
        return None, HandlerSpans(current.get_tracer(SCOPE))
    services = sorted(p.service for p in participants)
    provider = tracer_provider(
        os.environ, services[0] if len(services) == 1 else "saga-participants"
    )
    trace.set_tracer_provider(provider)
    return provider, HandlerSpans(provider.get_tracer(SCOPE))
