"""The orchestrator's spans (adapters/tracing/saga_spans.py) on the in-memory fakes and a
virtual clock: one span per saga and per attempt, each made when it ends, with the ids the
saga's messages named, the times its state recorded, and how it ended."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from adapters.tracing.saga_spans import DerivedIds, SagaSpans
from orchestrator import Retry, Saga, trace
from orchestrator.engine import Engine
from orchestrator.messages import Command, Exchange, Reply, ReplyError, StartSaga
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus

STARTER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
STARTER_SPAN = "00f067aa0ba902b7"
STARTER = {"traceparent": f"00-{STARTER_TRACE}-{STARTER_SPAN}-01"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Parcel(BaseModel):
    ref: str


STEADY = Retry(max_attempts=2, initial_interval=2, jitter=0)
parcel = Saga("parcel", version=1, input=Parcel, timeout=10)
parcel.remote(
    "reserve",
    command="stock.reserve",
    compensation="stock.release",
    compensation_timeout=5,
    compensation_retry=STEADY,
)
parcel.remote("charge", command="pay.charge", compensation=None, retry=STEADY)
rushed = Saga("rushed", version=1, input=Parcel, timeout=10, deadline=5)
rushed.remote("charge", command="pay.charge", pivot=True, retry=STEADY)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


class Run:
    def __init__(self) -> None:
        self.clock = Clock()
        self.exported = InMemorySpanExporter()
        provider = TracerProvider(id_generator=DerivedIds())
        provider.add_span_processor(SimpleSpanProcessor(self.exported))
        self.publisher = MemoryPublisher()
        self.engine = Engine(
            MemoryStore(clock=self.clock),
            self.publisher,
            Registry([parcel, rushed]),
            clock=self.clock,
            spans=SagaSpans(provider),
        )

    async def start(self, saga: str, key: str, starter: dict[str, str] | None = None) -> UUID:
        started = await self.engine.start(
            StartSaga(saga=saga, key=key, input={"ref": "r"}), trace=starter
        )
        assert started.saga_id is not None
        return started.saga_id

    def command(self) -> tuple[Command, dict[str, str]]:
        """The last command sent, and its headers."""
        m = [m for m in self.publisher.published if m.exchange == Exchange.COMMANDS][-1]
        body = Command.model_validate({**json.loads(m.body), "command": m.routing_key})
        return body, dict(m.headers or {})

    async def answer(self, at: float, error: str | None = None, retryable: bool = True) -> None:
        self.clock.at(at)
        cmd, _ = self.command()
        await self.engine.reply(
            Reply(
                command_id=cmd.command_id,
                saga_id=cmd.saga_id,
                step=cmd.step,
                outcome="success" if error is None else "failure",
                error=None if error is None else ReplyError(type=error, retryable=retryable),
            )
        )

    async def timers(self, at: float) -> None:
        self.clock.at(at)
        await self.engine.fire_timers()

    def spans(self) -> Sequence[ReadableSpan]:
        return self.exported.get_finished_spans()


def seconds(span: ReadableSpan) -> tuple[float, float]:
    """The span's start and end, in seconds after T0."""
    t0 = T0.timestamp() * 1e9
    assert span.start_time is not None and span.end_time is not None
    return (span.start_time - t0) / 1e9, (span.end_time - t0) / 1e9


def ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) in hex."""
    assert span.context is not None
    parent = None if span.parent is None else f"{span.parent.span_id:016x}"
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_retry_and_a_compensation_give_one_span_per_attempt_under_the_saga() -> None:
    run = Run()
    saga_id = await run.start("parcel", "p-1", STARTER)
    sent: list[tuple[Command, dict[str, str]]] = [run.command()]
    await run.answer(1)  # reserve, attempt 1: succeeded
    sent.append(run.command())
    await run.answer(2, "card_timeout")  # charge, attempt 1: failed, retried 2 s later
    await run.timers(4)
    sent.append(run.command())
    await run.answer(5, "card_declined", retryable=False)  # charge 2: failed for good
    sent.append(run.command())  # reserve's compensation, attempt 1: no answer in 5 s
    await run.timers(10)
    await run.timers(12)
    sent.append(run.command())
    await run.answer(13)  # the compensation's attempt 2: succeeded; the saga is undone

    spans = run.spans()
    saga_span = trace.saga_span_id(saga_id)
    assert [(s.name, seconds(s)) for s in spans] == [
        ("step reserve", (0, 1)),
        ("step charge", (1, 2)),
        ("step charge", (4, 5)),
        ("compensation reserve", (5, 10)),
        ("compensation reserve", (12, 13)),
        ("saga parcel", (0, 13)),
    ]
    # Every span is in the starter's trace: the saga's under the starter's span, each
    # attempt's under the saga's, with the id its command's traceparent named.
    assert ids(spans[-1]) == (STARTER_TRACE, saga_span, STARTER_SPAN)
    for span, (cmd, headers) in zip(spans[:-1], sent, strict=True):
        attempt = trace.attempt_span_id(cmd.command_id)
        assert ids(span) == (STARTER_TRACE, attempt, saga_span)
        assert headers["traceparent"] == f"00-{STARTER_TRACE}-{attempt}-01"
        assert span.kind == SpanKind.CLIENT
    common = {"saga.name": "parcel", "saga.id": str(saga_id), "saga.key": "p-1"}
    assert [attributes(s) for s in spans[:-1]] == [
        {
            **common,
            "saga.step": cmd.step,
            "saga.kind": cmd.kind,
            "saga.attempt": cmd.attempt,
            "saga.command_id": str(cmd.command_id),
            **outcome,
        }
        for (cmd, _), outcome in zip(
            sent,
            [
                {"saga.outcome": "succeeded"},
                {"saga.outcome": "failed", "error.type": "card_timeout"},
                {"saga.outcome": "failed", "error.type": "card_declined"},
                {
                    "saga.outcome": "timed_out",
                    "saga.timeout": "start_to_close",
                    "error.type": "timeout",
                },
                {"saga.outcome": "succeeded"},
            ],
            strict=True,
        )
    ]
    assert [(c.kind, c.attempt) for c, _ in sent] == [
        ("action", 1),
        ("action", 1),
        ("action", 2),
        ("compensation", 1),
        ("compensation", 2),
    ]
    assert attributes(spans[-1]) == {
        **common,
        "saga.version": 1,
        "saga.outcome": "compensated",
        "error.type": "step_failed",  # the saga's error: its step failed (card_declined)
    }
    assert [s.status.status_code for s in spans] == [
        StatusCode.UNSET,
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
        StatusCode.ERROR,
    ]


async def test_a_saga_started_without_trace_context_is_a_trace_of_its_own() -> None:
    run = Run()
    saga_id = await run.start("parcel", "p-2")
    await run.answer(1)
    await run.answer(2)
    [reserve, charge, saga] = run.spans()
    own = saga_id.hex
    assert ids(saga) == (own, trace.saga_span_id(saga_id), None)
    assert {ids(reserve)[0], ids(charge)[0]} == {own}
    assert (saga.name, attributes(saga)["saga.outcome"], saga.status.status_code) == (
        "saga parcel",
        "completed",
        StatusCode.UNSET,
    )


async def test_an_attempt_the_deadline_cuts_off_ends_with_the_parked_saga() -> None:
    run = Run()
    saga_id = await run.start("rushed", "r-1")
    await run.timers(6)  # past the deadline, with the pivot in flight: parked
    [charge, saga] = run.spans()
    assert (charge.name, seconds(charge), attributes(charge)["saga.outcome"]) == (
        "step charge",
        (0, 6),
        "cut_off",
    )
    assert ids(charge)[2] == trace.saga_span_id(saga_id)
    assert (attributes(saga)["saga.outcome"], attributes(saga)["error.type"]) == (
        SagaStatus.FAILED.value,
        "deadline_exceeded",
    )


async def test_a_heartbeat_ends_nothing() -> None:
    run = Run()
    await run.start("parcel", "p-3")
    cmd, _ = run.command()
    run.clock.at(1)
    await run.engine.reply(
        Reply(command_id=cmd.command_id, saga_id=cmd.saga_id, step=cmd.step, outcome="heartbeat")
    )
    assert run.spans() == ()


def test_the_saga_spans_need_the_derived_ids() -> None:
    with pytest.raises(ValueError, match="DerivedIds"):
        SagaSpans(TracerProvider())


def test_other_spans_of_the_provider_get_random_ids() -> None:
    provider = TracerProvider(id_generator=DerivedIds())
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    tracer = provider.get_tracer("elsewhere")
    for _ in range(2):
        tracer.start_span("other").end()
    first, second = (ids(s) for s in exported.get_finished_spans())
    assert first[0] != second[0] and first[1] != second[1]
