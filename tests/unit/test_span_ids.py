"""The ids of a saga's spans are derived, never stored (orchestrator/trace.py): the same in
every replica and every process, and the ones the saga's messages name as their parent once
spans are on; with spans off, the messages carry the starter's context as they always did."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel
from structlog.testing import capture_logs

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator import Retry, Saga, trace
from orchestrator.engine import Engine
from orchestrator.messages import Exchange, Reply, StartSaga
from orchestrator.registry import Registry
from orchestrator.unit_of_work import Committed

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
STARTER = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "tracestate": "congo=t61"}
NOW = datetime(2026, 1, 1, tzinfo=UTC)
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def test_span_ids_are_derived_from_the_saga_and_the_command() -> None:
    saga_id, command_id = uuid.uuid4(), uuid.uuid4()
    assert trace.saga_span_id(saga_id) == trace.saga_span_id(uuid.UUID(str(saga_id)))
    assert trace.attempt_span_id(command_id) == trace.attempt_span_id(uuid.UUID(str(command_id)))
    ids = {trace.saga_span_id(saga_id), trace.attempt_span_id(command_id)}
    ids |= {trace.attempt_span_id(uuid.uuid4()) for _ in range(1000)}
    assert len(ids) == 1002  # no two alike
    assert all(HEX16.match(i) and i != "0" * 16 for i in ids)
    # The saga's span and an attempt's never share an id, even from one uuid.
    assert trace.saga_span_id(saga_id) != trace.attempt_span_id(saga_id)


def test_the_trace_id_is_the_starters_else_the_saga_ids() -> None:
    saga_id = uuid.uuid4()
    assert trace.saga_trace_id(STARTER, saga_id) == TRACE_ID
    assert trace.saga_trace_id(None, saga_id) == saga_id.hex
    assert trace.saga_trace_id({"traceparent": "garbage"}, saga_id) == saga_id.hex


def test_span_headers_keep_the_starters_trace_state_and_sampling() -> None:
    saga_id = uuid.uuid4()
    assert trace.span_headers(STARTER, saga_id, "a" * 16) == {
        "traceparent": f"00-{TRACE_ID}-{'a' * 16}-01",
        "tracestate": "congo=t61",
    }
    unsampled = {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-00"}
    assert trace.span_headers(unsampled, saga_id, "b" * 16) == {
        "traceparent": f"00-{TRACE_ID}-{'b' * 16}-00"
    }
    # No starter: the saga's own trace, sampled.
    assert trace.span_headers(None, saga_id, "c" * 16) == {
        "traceparent": f"00-{saga_id.hex}-{'c' * 16}-01"
    }


class Parcel(BaseModel):
    ref: str


ONCE = Retry(max_attempts=1)
courier = Saga("span_courier", version=1, input=Parcel, timeout=10)
courier.remote("pick_up", command="vans.pick_up", retry=ONCE, compensation=None)
shop = Saga("span_shop", version=1, input=Parcel, timeout=10)
shop.remote("pack", command="depot.pack", retry=ONCE, compensation=None)
shop.child("deliver", saga="span_courier")


async def test_with_spans_each_message_names_a_span_of_the_saga() -> None:
    told: list[Committed] = []
    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = Engine(
        store, publisher, Registry([shop, courier]), clock=lambda: NOW, spans=told.extend
    )
    started = await engine.start(StartSaga(saga="span_shop", key="k", input={"ref": "r"}))
    assert started.saga_id is not None
    [command] = publisher.published
    body = json.loads(command.body)
    attempt = trace.attempt_span_id(uuid.UUID(body["command_id"]))
    assert command.headers == {"traceparent": f"00-{started.saga_id.hex}-{attempt}-01"}
    assert [(c.before, c.after.saga_id) for c in told] == [(None, started.saga_id)]


async def test_without_spans_messages_carry_the_starters_context_as_it_came() -> None:
    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = Engine(store, publisher, Registry([shop, courier]), clock=lambda: NOW)
    await engine.start(StartSaga(saga="span_shop", key="k", input={"ref": "r"}), trace=STARTER)
    await engine.start(StartSaga(saga="span_shop", key="plain", input={"ref": "r"}))
    commands = [m for m in publisher.published if m.exchange == Exchange.COMMANDS]
    assert [m.headers for m in commands] == [STARTER, None]


async def test_with_spans_a_child_saga_nests_under_the_attempt_that_started_it() -> None:
    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = Engine(
        store, publisher, Registry([shop, courier]), clock=lambda: NOW, spans=lambda _: None
    )
    with capture_logs() as logs:
        await engine.start(StartSaga(saga="span_shop", key="k", input={"ref": "r"}), trace=STARTER)
        [pack] = publisher.published
        body = json.loads(pack.body)
        await engine.reply(
            Reply(
                command_id=uuid.UUID(body["command_id"]),
                saga_id=uuid.UUID(body["saga_id"]),
                step="pack",
                outcome="success",
            )
        )
    [start] = [m for m in publisher.published if m.exchange == Exchange.SAGAS]
    parent = json.loads(start.body)["parent"]["command_id"]
    assert start.headers == {
        "traceparent": f"00-{TRACE_ID}-{trace.attempt_span_id(uuid.UUID(parent))}-01",
        "tracestate": "congo=t61",
    }
    assert {line.get("trace_id") for line in logs if "saga_id" in line} == {TRACE_ID}


async def test_with_spans_log_lines_name_the_trace_of_a_saga_started_without_one() -> None:
    store, publisher = MemoryStore(clock=lambda: NOW), MemoryPublisher()
    engine = Engine(
        store, publisher, Registry([shop, courier]), clock=lambda: NOW, spans=lambda _: None
    )
    with capture_logs() as logs:
        started = await engine.start(StartSaga(saga="span_shop", key="k", input={"ref": "r"}))
    assert started.saga_id is not None
    assert {line.get("trace_id") for line in logs if "saga_id" in line} == {started.saga_id.hex}
