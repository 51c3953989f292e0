"""Spans on real services: one saga with a retry and a compensation, started with a caller's
`traceparent`, gives one trace: the saga's span under the caller's, an attempt span per
command under the saga's, and the participant's handler span under the attempt that sent it.

The orchestrator and the participants each have a tracer provider and an in-memory exporter
of their own, and the participant's spans take their parent from the command's headers only:
the tree joins across the broker as it does across processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aio_pika import DeliveryMode, Message
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from adapters.clock import utcnow
from adapters.participant import Participant, StepFailed
from adapters.participant.handler_spans import SCOPE, HandlerSpans
from adapters.participant.worker import ParticipantWorker
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import Topology
from adapters.tracing.saga_spans import DerivedIds, SagaSpans
from orchestrator import Retry, Saga, trace
from orchestrator.messages import Command, Exchange, StartSaga
from orchestrator.state import SagaStatus
from tests.fixtures.polling import eventually
from tests.integration.harness import System, running_system

STARTER_TRACE = "0af7651916cd43dd8448eb211c80319c"
STARTER_SPAN = "b7ad6b7169203331"


class Parcel(BaseModel):
    ref: str


traced = Saga("traced_parcel", version=1, input=Parcel, timeout=10)
traced.remote("reserve", command="stock.reserve", compensation="stock.release")
traced.remote(
    "charge",
    command="till.charge",
    compensation=None,
    retry=Retry(max_attempts=3, initial_interval=0.1, jitter=0),
)


def participants() -> list[Participant]:
    stock, till = Participant("stock"), Participant("till")

    @stock.handler("stock.reserve")
    async def reserve(cmd: Command) -> dict[str, Any]:
        return {"reserved": cmd.payload["ref"]}

    @stock.handler("stock.release")
    async def release(cmd: Command) -> None:
        return None

    @till.handler("till.charge")
    async def charge(cmd: Command) -> None:
        if cmd.attempt == 1:
            raise StepFailed("till_busy", "try again", retryable=True)
        raise StepFailed("card_declined", "no funds", retryable=False)

    return [stock, till]


def collecting() -> tuple[TracerProvider, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider(id_generator=DerivedIds())
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, exported


async def start(system: System) -> None:
    """A start as a traced caller publishes it: its span named in `traceparent`."""
    body = StartSaga(saga="traced_parcel", key="spans-1", input={"ref": "r-1"})
    exchange = await system.channel.get_exchange(system.topology.name(Exchange.SAGAS))
    await exchange.publish(
        Message(
            body.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            headers={"traceparent": f"00-{STARTER_TRACE}-{STARTER_SPAN}-01"},
        ),
        routing_key="start",
    )


def hexed(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) in hex."""
    assert span.context is not None
    parent = None if span.parent is None else f"{span.parent.span_id:016x}"
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


def attrs(span: ReadableSpan, *names: str) -> tuple[Any, ...]:
    return tuple((span.attributes or {}).get(name) for name in names)


async def test_a_retry_and_a_compensation_give_one_span_tree_across_orchestrator_and_participant(
    database_url: str, topology: Topology, amqp_url: str
) -> None:
    engine_provider, engine_spans = collecting()
    handler_provider, handler_spans = collecting()
    async with running_system(
        database_url, topology, amqp_url, [traced], spans=SagaSpans(engine_provider)
    ) as system:
        for participant in participants():
            channel = await open_channel(system.connection)
            worker = ParticipantWorker(
                participant,
                channel,
                system.topology,
                clock=utcnow,
                spans=HandlerSpans(handler_provider.get_tracer(SCOPE)),
            )
            await worker.start()
            system.workers[participant.service] = worker
        await start(system)
        state = await system.wait_status("spans-1", SagaStatus.COMPENSATED)

        def ended(exporter: InMemorySpanExporter, count: int) -> Sequence[ReadableSpan] | None:
            spans = exporter.get_finished_spans()
            return spans if len(spans) >= count else None

        async def orchestrators() -> Sequence[ReadableSpan] | None:
            return ended(engine_spans, 5)

        async def handlers() -> Sequence[ReadableSpan] | None:
            return ended(handler_spans, 4)

        engine_made = await eventually(orchestrators, message="the orchestrator's 5 spans")
        handler_made = await eventually(handlers, message="the participants' 4 spans")

    saga_id = str(state.saga_id)
    saga_span = trace.saga_span_id(state.saga_id)
    *attempts, saga = engine_made
    # The saga's span: under the caller's, from start to end, compensated.
    assert saga.name == "saga traced_parcel"
    assert hexed(saga) == (STARTER_TRACE, saga_span, STARTER_SPAN)
    assert attrs(saga, "saga.id", "saga.key", "saga.outcome") == (
        saga_id,
        "spans-1",
        "compensated",
    )
    # One span per attempt, under the saga's, in the order they ended.
    assert [
        (s.name, *attrs(s, "saga.kind", "saga.attempt", "saga.outcome", "error.type"))
        for s in attempts
    ] == [
        ("step reserve", "action", 1, "succeeded", None),
        ("step charge", "action", 1, "failed", "till_busy"),
        ("step charge", "action", 2, "failed", "card_declined"),
        ("compensation reserve", "compensation", 1, "succeeded", None),
    ]
    assert all(hexed(s)[0::2] == (STARTER_TRACE, saga_span) for s in attempts)
    assert all(s.kind == SpanKind.CLIENT for s in attempts)
    # Each handler's span: under the attempt span whose command it ran, which it knew only
    # from the command's traceparent header; inside that attempt's time.
    by_command = {attrs(s, "saga.command_id")[0]: s for s in attempts}
    assert sorted(
        (s.name, *attrs(s, "saga.service", "saga.attempt", "saga.outcome", "error.type"))
        for s in handler_made
    ) == [
        ("handle stock.release", "stock", 1, "succeeded", None),
        ("handle stock.reserve", "stock", 1, "succeeded", None),
        ("handle till.charge", "till", 1, "failed", "till_busy"),
        ("handle till.charge", "till", 2, "failed", "card_declined"),
    ]
    for handled in handler_made:
        attempt = by_command[attrs(handled, "saga.command_id")[0]]
        assert hexed(handled)[0] == STARTER_TRACE
        assert hexed(handled)[2] == hexed(attempt)[1]
        assert attrs(handled, "saga.id", "saga.step", "saga.kind") == (
            saga_id,
            *attrs(attempt, "saga.step", "saga.kind"),
        )
        assert handled.kind == SpanKind.SERVER
        assert handled.start_time and handled.end_time and attempt.start_time
        assert attempt.end_time is not None
        assert attempt.start_time <= handled.start_time <= handled.end_time <= attempt.end_time
    assert saga.start_time and saga.end_time
    assert all(
        s.start_time and s.end_time and saga.start_time <= s.start_time <= s.end_time
        for s in attempts
    )
    assert attempts[-1].end_time == saga.end_time  # the compensation's reply ended the saga
