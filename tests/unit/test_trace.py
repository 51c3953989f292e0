"""W3C trace context: read from headers, kept by the saga, sent on with every message it
publishes (commands, outcome events, a child's start, the child's answer); on the fakes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator import Retry, Saga, trace
from orchestrator.engine import Engine
from orchestrator.messages import Command, Exchange, OutboxMessage, Reply, StartSaga
from orchestrator.registry import Registry

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": TRACEPARENT}, {"traceparent": TRACEPARENT}),
        (
            {"traceparent": TRACEPARENT.encode(), "tracestate": b"congo=t61rcWkgMzE"},
            {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"},
        ),
        ({"traceparent": f" {TRACEPARENT.upper()} "}, {"traceparent": TRACEPARENT}),
        # A later version may append fields; version 00 may not.
        ({"traceparent": f"01-{TRACE_ID}-00f067aa0ba902b7-01-extra"}, "kept"),
        ({"traceparent": f"{TRACEPARENT}-extra"}, None),
        ({"traceparent": f"ff-{TRACE_ID}-00f067aa0ba902b7-01"}, None),
        ({"traceparent": f"00-{'0' * 32}-00f067aa0ba902b7-01"}, None),
        ({"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"}, None),
        ({"traceparent": "not a trace"}, None),
        ({"traceparent": 42}, None),
        ({"tracestate": "congo=t61rcWkgMzE"}, None),  # no state without a parent
        ({}, None),
        (None, None),
    ],
)
def test_trace_context_is_read_from_valid_headers_only(
    headers: dict[str, object] | None, expected: dict[str, str] | str | None
) -> None:
    found = trace.from_headers(headers)
    if expected == "kept":
        assert found is not None and trace.trace_id(found["traceparent"]) == TRACE_ID
    else:
        assert found == expected


def test_log_fields_name_the_trace_id() -> None:
    assert trace.log_fields({"traceparent": TRACEPARENT}) == {"trace_id": TRACE_ID}
    assert trace.log_fields(None) == {}


class Parcel(BaseModel):
    ref: str


ONCE = Retry(max_attempts=1)
courier = Saga("courier", version=1, input=Parcel, timeout=10)
courier.remote("pick_up", command="vans.pick_up", retry=ONCE, compensation=None)
shop = Saga("shop", version=1, input=Parcel, timeout=10)
shop.remote("pack", command="depot.pack", retry=ONCE, compensation=None)
shop.child("deliver", saga="courier")


def commands(messages: list[OutboxMessage]) -> list[tuple[Command, OutboxMessage]]:
    return [
        (Command.model_validate({**json.loads(m.body), "command": m.routing_key}), m)
        for m in messages
        if m.exchange == Exchange.COMMANDS
    ]


async def test_every_message_of_a_traced_saga_carries_its_trace_context() -> None:
    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = Engine(store, publisher, Registry([shop, courier]), clock=lambda: NOW)
    context = {"traceparent": TRACEPARENT, "tracestate": "congo=1"}

    started = await engine.start(StartSaga(saga="shop", key="k", input={"ref": "r"}), trace=context)
    assert started.saga_id is not None
    saved = await store.get(started.saga_id)
    assert saved is not None and saved.trace == context
    [(pack, _)] = commands(publisher.published)
    ok = Reply(command_id=pack.command_id, saga_id=pack.saga_id, step=pack.step, outcome="success")
    await engine.reply(ok)

    # The child's start goes out with the headers; the runtime hands them to engine.start.
    [child_start] = [m for m in publisher.published if m.exchange == Exchange.SAGAS]
    assert child_start.headers == context
    request = StartSaga.model_validate_json(child_start.body)
    child = await engine.start(request, trace=trace.from_headers(child_start.headers))
    assert child.saga_id is not None
    [(pick_up, _)] = [(c, m) for c, m in commands(publisher.published) if c.saga == "courier"]
    await engine.reply(
        Reply(
            command_id=pick_up.command_id,
            saga_id=pick_up.saga_id,
            step=pick_up.step,
            outcome="success",
        )
    )
    answer = next(m for m in publisher.published if m.exchange == Exchange.DEFAULT)
    await engine.reply(Reply.model_validate_json(answer.body))

    done = await store.get(started.saga_id)
    assert done is not None and done.status == "completed"
    kinds = {m.exchange for m in publisher.published}
    assert kinds == {Exchange.COMMANDS, Exchange.EVENTS, Exchange.SAGAS, Exchange.DEFAULT}
    assert all(m.headers == context for m in publisher.published)


async def test_a_saga_started_without_a_trace_context_sends_no_headers() -> None:
    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = Engine(store, publisher, Registry([shop, courier]), clock=lambda: NOW)
    started = await engine.start(StartSaga(saga="shop", key="k", input={"ref": "r"}))
    assert started.saga_id is not None
    saved = await store.get(started.saga_id)
    assert saved is not None and saved.trace is None
    assert publisher.published and all(m.headers is None for m in publisher.published)
