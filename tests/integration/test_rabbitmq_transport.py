"""The RabbitMQ transport against a real broker: topology, confirmed publishing, consuming."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import aio_pika
import aiormq
import pytest
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.exceptions import ChannelPreconditionFailed, PublishError

from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.consumer import (
    DEAD_REASON_HEADER,
    ORIGINAL_QUEUE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    backoff,
    consume,
)
from adapters.rabbitmq.delivery import Delivery, parse
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import (
    CANCELS_QUEUE,
    DEAD_QUEUE,
    DEFAULT_DELIVERY_LIMIT,
    REPLIES_QUEUE,
    REQUESTS_QUEUE,
    Topology,
)
from orchestrator.errors import Poison, PublishFailed
from orchestrator.messages import (
    REPLY_QUEUE,
    CancelSaga,
    Command,
    Exchange,
    OutboxMessage,
    StartSaga,
)
from tests.fixtures.polling import eventually
from tests.fixtures.rabbitmq import MakeTopology, leftovers, take

Channel = aio_pika.abc.AbstractRobustChannel


def command(name: str = "payments.charge") -> Command:
    return Command(
        command_id=uuid.uuid4(),
        saga_id=uuid.uuid4(),
        saga="order",
        step="charge_payment",
        kind="action",
        attempt=1,
        idempotency_key="order-42:charge_payment:action",
        payload={"amount": 10},
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        command=name,
    )


def outbox_command(cmd: Command) -> OutboxMessage:
    """Exactly what the engine writes to the outbox for a command."""
    return OutboxMessage(
        exchange=Exchange.COMMANDS,
        routing_key=cmd.command,
        body=cmd.model_dump_json().encode(),
        message_id=str(cmd.command_id),
        reply_to=REPLY_QUEUE,
    )


async def collect(channel: Channel, queue: str, count: int) -> list[AbstractIncomingMessage]:
    got: list[AbstractIncomingMessage] = []

    async def probe() -> bool:
        got.extend(await take(channel, queue))
        return len(got) >= count

    await eventually(probe, timeout=15, message=f"{count} message(s) in {queue}")
    return got


# -- topology -----------------------------------------------------------------------------------


async def test_declaring_twice_is_harmless_and_keeps_queued_messages(
    amqp_channel: Channel, topology: Topology
) -> None:
    await topology.declare_core(amqp_channel)
    await topology.declare_service(amqp_channel, "payments")
    publisher = RabbitPublisher(amqp_channel, topology)
    await publisher.publish_json(
        Exchange.SAGAS, "start", StartSaga(saga="order", key="k", input={})
    )
    await publisher.publish([outbox_command(command())])

    await topology.declare_core(amqp_channel)
    await topology.declare_service(amqp_channel, "payments")
    # Another process declaring the same names computes the same arguments.
    await Topology(topology.prefix).declare_core(amqp_channel)
    await Topology(topology.prefix).declare_service(amqp_channel, "payments")

    [start] = await leftovers(amqp_channel, topology.name(REQUESTS_QUEUE))
    assert StartSaga.model_validate_json(start.body).key == "k"
    assert len(await leftovers(amqp_channel, topology.name("commands.payments"))) == 1


async def test_queues_are_quorum_queues_with_the_canonical_arguments(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> None:
    channel = await open_channel(amqp_connection)
    try:
        await topology.declare_core(channel)
        # The broker compares arguments on re-declaration: a classic or a differently limited
        # queue by that name is refused, so the queue has exactly the topology's arguments.
        wrong = {**topology.queue_arguments(REQUESTS_QUEUE), "x-queue-type": "classic"}
        with pytest.raises(ChannelPreconditionFailed, match="x-queue-type"):
            await channel.declare_queue(
                topology.name(REQUESTS_QUEUE), durable=True, arguments=wrong, robust=False
            )
    finally:
        await channel.close()
    channel = await open_channel(amqp_connection)
    try:
        other = {**topology.queue_arguments(REPLIES_QUEUE), "x-delivery-limit": 99}
        with pytest.raises(ChannelPreconditionFailed, match="x-delivery-limit"):
            await channel.declare_queue(
                topology.name(REPLIES_QUEUE), durable=True, arguments=other, robust=False
            )
    finally:
        await channel.close()


def test_topology_names() -> None:
    topology = Topology("p.")
    assert topology.name("saga.commands") == "p.saga.commands"
    assert topology.name(Exchange.DEFAULT) == ""
    assert Topology.services_of(["payments.charge", "payments.refund", "local.order.x"]) == {
        "payments",
        "local",
    }
    with pytest.raises(ValueError, match=r"<service>\.<command>"):
        Topology.services_of(["nodot"])
    assert "x-delivery-limit" not in topology.queue_arguments(DEAD_QUEUE)
    assert topology.queue_arguments(REQUESTS_QUEUE)["x-dead-letter-exchange"] == "p.saga.dead"


async def test_delete_all_refuses_production_names(amqp_channel: Channel) -> None:
    with pytest.raises(RuntimeError, match="unprefixed"):
        await Topology("").delete_all(amqp_channel)


# -- publishing ---------------------------------------------------------------------------------


async def test_publish_routes_each_message_with_its_properties(
    amqp_channel: Channel, topology: Topology
) -> None:
    await topology.declare_core(amqp_channel)
    await topology.declare_service(amqp_channel, "payments")
    publisher = RabbitPublisher(amqp_channel, topology)
    cmd = command()
    reply = OutboxMessage(
        exchange=Exchange.DEFAULT, routing_key=REPLY_QUEUE, body=b'{"r":1}', message_id="reply-1"
    )
    event = OutboxMessage(
        exchange=Exchange.EVENTS, routing_key="order.completed", body=b"{}", message_id="event-1"
    )
    # An event nobody subscribed to is fine (not mandatory); it must not fail the batch.
    await publisher.publish([outbox_command(cmd), reply, event])
    await publisher.publish_json(Exchange.SAGAS, "cancel", CancelSaga(key="k", reason="because"))

    [delivered] = await collect(amqp_channel, topology.name("commands.payments"), 1)
    assert delivered.body == cmd.model_dump_json().encode()
    assert delivered.routing_key == "payments.charge"
    assert delivered.exchange == topology.name(Exchange.COMMANDS)
    assert delivered.delivery_mode == DeliveryMode.PERSISTENT
    assert delivered.content_type == "application/json"
    assert delivered.message_id == str(cmd.command_id)
    assert delivered.reply_to == topology.name(REPLY_QUEUE)

    [replied] = await collect(amqp_channel, topology.name(REPLIES_QUEUE), 1)
    assert (replied.body, replied.message_id) == (b'{"r":1}', "reply-1")
    assert replied.delivery_mode == DeliveryMode.PERSISTENT

    # Cancels have a queue of their own, never behind starts waiting for admission.
    [cancel] = await collect(amqp_channel, topology.name(CANCELS_QUEUE), 1)
    assert cancel.routing_key == "cancel"
    assert CancelSaga.model_validate_json(cancel.body).reason == "because"
    assert cancel.delivery_mode == DeliveryMode.PERSISTENT


async def test_a_command_for_a_service_without_a_queue_raises(
    amqp_channel: Channel, topology: Topology
) -> None:
    await topology.declare_core(amqp_channel)
    await topology.declare_service(amqp_channel, "payments")
    publisher = RabbitPublisher(amqp_channel, topology)
    good, lost = command("payments.charge"), command("nowhere.do_it")

    with pytest.raises(PublishFailed) as raised:
        await publisher.publish([outbox_command(good), outbox_command(lost)])

    assert [mid for mid, _ in raised.value.failures] == [str(lost.command_id)]
    assert "NO_ROUTE" in str(raised.value)
    # The rest of the batch was confirmed and is there.
    [delivered] = await collect(amqp_channel, topology.name("commands.payments"), 1)
    assert delivered.message_id == str(good.command_id)


async def test_a_return_is_charged_to_the_right_publish_when_message_ids_repeat(
    amqp_channel: Channel, topology: Topology
) -> None:
    """aiormq matches a return to its publish by message_id; the same id in flight twice
    (a relay republishing an outbox row) must not make the unroutable one look confirmed."""
    await topology.declare_core(amqp_channel)
    await topology.declare_service(amqp_channel, "payments")
    publisher = RabbitPublisher(amqp_channel, topology)

    lost, delivered = await asyncio.gather(
        publisher.publish_json(Exchange.COMMANDS, "nowhere.x", b"{}", message_id="same"),
        publisher.publish_json(Exchange.COMMANDS, "payments.charge", b"{}", message_id="same"),
        return_exceptions=True,
    )

    assert isinstance(lost, PublishFailed)
    assert delivered is None
    assert len(await collect(amqp_channel, topology.name("commands.payments"), 1)) == 1


async def test_aio_pika_raises_on_return_only_when_asked_to(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> None:
    """Why `open_channel` sets on_return_raises: without it an unroutable mandatory publish
    is confirmed like any other and the message is gone."""
    ours = await open_channel(amqp_connection)
    plain = await amqp_connection.channel(publisher_confirms=True)
    try:
        with pytest.raises(PublishError):
            await ours.default_exchange.publish(Message(b"x"), topology.name("no-such-queue"))
        returned = await plain.default_exchange.publish(
            Message(b"x"), topology.name("no-such-queue")
        )
        # No exception: the returned message is handed back as the "result" of the publish.
        assert isinstance(returned, aiormq.abc.DeliveredMessage)
    finally:
        await ours.close()
        await plain.close()


async def test_publisher_refuses_a_channel_that_would_hide_returns(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> None:
    plain = await amqp_connection.channel(publisher_confirms=True)
    try:
        with pytest.raises(ValueError, match="on_return_raises"):
            RabbitPublisher(plain, topology)
    finally:
        await plain.close()


# -- consuming ----------------------------------------------------------------------------------

PICKLE_BODY = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x07example\x94."


async def test_malformed_messages_are_dead_lettered_and_the_consumer_keeps_going(
    amqp_connection: AbstractRobustConnection, amqp_channel: Channel, topology: Topology
) -> None:
    await topology.declare_core(amqp_channel)
    consumer_channel = await open_channel(amqp_connection)
    publisher = RabbitPublisher(amqp_channel, topology)
    started: list[StartSaga] = []

    async def handler(delivery: Delivery) -> None:
        started.append(parse(StartSaga, delivery))

    consumer = await consume(
        consumer_channel, REQUESTS_QUEUE, handler, topology=topology, prefetch=10
    )
    bad = {
        "bad-json": (b"{not json", "application/json"),
        "wrong-types": (b'{"saga": 1, "key": "k", "input": []}', "application/json"),
        "pickle": (PICKLE_BODY, "application/x-python-pickle"),
        "deep": (b'{"saga":"o","key":"k","input":' + b'{"a":' * 300 + b"1" + b"}" * 301, None),
    }
    for message_id, (body, content_type) in bad.items():
        await publisher.publish_message(
            Exchange.SAGAS,
            "start",
            Message(body, content_type=content_type, message_id=message_id, headers={"h": "v"}),
        )
    await publisher.publish_json(
        Exchange.SAGAS, "start", StartSaga(saga="order", key="good", input={})
    )

    await eventually(lambda: _ready(bool(started)), message="the good message handled")
    dead = {m.message_id: m for m in await collect(amqp_channel, topology.name(DEAD_QUEUE), 4)}
    await consumer.stop()
    await consumer_channel.close()

    assert [s.key for s in started] == ["good"]
    assert set(dead) == set(bad)
    reasons = {mid: str((m.headers or {})[DEAD_REASON_HEADER]) for mid, m in dead.items()}
    assert reasons["bad-json"].startswith("invalid JSON: ")
    assert "field saga: Input should be a valid string" in reasons["wrong-types"]
    assert reasons["wrong-types"].endswith("field input: Input should be an object")
    assert reasons["pickle"] == (
        "content type application/x-python-pickle is not accepted: JSON only"
    )
    assert "recursion limit" in reasons["deep"]
    for dead_id, message in dead.items():
        headers = message.headers or {}
        assert headers[ORIGINAL_QUEUE_HEADER] == topology.name(REQUESTS_QUEUE)
        assert headers[ORIGINAL_ROUTING_KEY_HEADER] == "start"
        assert headers["h"] == "v"  # the original headers travel along
        assert message.body == bad[str(dead_id)][0]
        assert message.delivery_mode == DeliveryMode.PERSISTENT
    # Every one was acked: nothing came back when the consumer's channel closed.
    assert await leftovers(amqp_channel, topology.name(REQUESTS_QUEUE)) == []


async def test_validation_errors_escaping_a_handler_count_as_poison(
    amqp_connection: AbstractRobustConnection, amqp_channel: Channel, topology: Topology
) -> None:
    """A handler that validates on its own (no `parse`) still dead-letters bad input instead
    of retrying it up to the delivery limit."""
    await topology.declare_core(amqp_channel)
    publisher = RabbitPublisher(amqp_channel, topology)
    consumer_channel = await open_channel(amqp_connection)
    calls: list[str] = []

    async def handler(delivery: Delivery) -> None:
        calls.append(delivery.message_id or "")
        if delivery.message_id == "pydantic":
            StartSaga.model_validate_json(delivery.body)
        else:
            json.loads(delivery.body)

    consumer = await consume(
        consumer_channel, REQUESTS_QUEUE, handler, topology=topology, prefetch=1
    )
    await publisher.publish_json(Exchange.SAGAS, "start", b'{"saga": 1}', message_id="pydantic")
    await publisher.publish_json(Exchange.SAGAS, "start", b"{oops", message_id="json")

    dead = await collect(amqp_channel, topology.name(DEAD_QUEUE), 2)
    await consumer.stop()
    await consumer_channel.close()

    reasons = {m.message_id: str((m.headers or {})[DEAD_REASON_HEADER]) for m in dead}
    assert reasons["pydantic"].startswith("field saga: Input should be a valid string")
    assert reasons["json"].startswith("invalid JSON: Expecting property name")
    assert sorted(calls) == ["json", "pydantic"]  # each handled once, never retried


async def test_a_crashing_handler_gets_the_message_again_until_the_delivery_limit(
    amqp_connection: AbstractRobustConnection, amqp_channel: Channel, make_topology: MakeTopology
) -> None:
    topology = make_topology(delivery_limit=2)
    await topology.declare_core(amqp_channel)
    consumer_channel = await open_channel(amqp_connection)
    publisher = RabbitPublisher(amqp_channel, topology)
    seen: list[tuple[str, int, bool]] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.message_id or "", delivery.delivery_count, delivery.redelivered))
        if delivery.message_id == "always" or delivery.delivery_count == 0:
            raise RuntimeError("database unavailable")

    consumer = await consume(
        consumer_channel, REQUESTS_QUEUE, handler, topology=topology, prefetch=1
    )
    for message_id in ("always", "once"):
        await publisher.publish_json(
            Exchange.SAGAS, "start", b'{"saga": "order"}', message_id=message_id
        )

    [dead] = await collect(amqp_channel, topology.name(DEAD_QUEUE), 1)
    await eventually(lambda: _ready(("once", 1, True) in seen), message="'once' retried")
    await consumer.stop()
    await consumer_channel.close()

    assert dead.message_id == "always"
    # The broker dead-lettered it (no reason header of ours), after 1 + delivery_limit tries.
    assert (dead.headers or {}).get("x-first-death-reason") == "delivery_limit"
    assert DEAD_REASON_HEADER not in (dead.headers or {})
    assert [count for mid, count, _ in seen if mid == "always"] == [0, 1, 2]
    assert [(count, again) for mid, count, again in seen if mid == "once"] == [
        (0, False),
        (1, True),
    ]
    assert await leftovers(amqp_channel, topology.name(REQUESTS_QUEUE)) == []


async def test_the_ack_comes_only_after_the_handler_returned(
    amqp_connection: AbstractRobustConnection, amqp_channel: Channel, topology: Topology
) -> None:
    await topology.declare_core(amqp_channel)
    await RabbitPublisher(amqp_channel, topology).publish_json(
        Exchange.SAGAS, "start", b"{}", message_id="m1"
    )
    queue = topology.name(REQUESTS_QUEUE)
    entered = asyncio.Event()

    async def stuck(delivery: Delivery) -> None:
        entered.set()
        await asyncio.Event().wait()  # the process dies before this handler returns

    first = await open_channel(amqp_connection)
    await consume(first, REQUESTS_QUEUE, stuck, topology=topology, prefetch=1)
    await asyncio.wait_for(entered.wait(), timeout=10)
    assert await leftovers(amqp_channel, queue) == []  # delivered, held unacked
    await first.close()

    handled: list[Delivery] = []

    async def finishes(delivery: Delivery) -> None:
        handled.append(delivery)

    second = await open_channel(amqp_connection)
    consumer = await consume(second, REQUESTS_QUEUE, finishes, topology=topology, prefetch=1)
    await eventually(lambda: _ready(bool(handled)), message="handled by the second consumer")
    await consumer.stop()  # waits for the message in hand, ack included
    await second.close()
    # Not acked on receipt: the broker handed it out again once its first consumer was gone.
    assert [(d.message_id, d.redelivered) for d in handled] == [("m1", True)]
    # Acked once the handler returned: closing the channel did not bring it back.
    assert await leftovers(amqp_channel, queue) == []


async def test_stop_cancels_the_consumer(amqp_channel: Channel, topology: Topology) -> None:
    await topology.declare_core(amqp_channel)
    publisher = RabbitPublisher(amqp_channel, topology)
    handled: list[str] = []

    async def handler(delivery: Delivery) -> None:
        handled.append(delivery.message_id or "")

    consumer = await consume(amqp_channel, REQUESTS_QUEUE, handler, topology=topology, prefetch=5)
    await publisher.publish_json(Exchange.SAGAS, "start", b"{}", message_id="before")
    await eventually(lambda: _ready(handled == ["before"]), message="first message handled")
    await consumer.stop()
    await publisher.publish_json(Exchange.SAGAS, "start", b"{}", message_id="after")

    left = await leftovers(amqp_channel, topology.name(REQUESTS_QUEUE))
    assert [m.message_id for m in left] == ["after"]
    assert handled == ["before"]


# -- parse --------------------------------------------------------------------------------------


def delivery(body: bytes, content_type: str | None = "application/json") -> Delivery:
    return Delivery(
        body=body, routing_key="start", exchange="sagas", queue="q", content_type=content_type
    )


def test_parse_accepts_json_with_or_without_a_content_type() -> None:
    body = b'{"saga": "order", "key": "k", "input": {}}'
    for content_type in ("application/json", "application/json; charset=utf-8", None, ""):
        assert parse(StartSaga, delivery(body, content_type)).key == "k"
    assert parse(StartSaga, body).saga == "order"


def test_parse_explains_what_is_wrong() -> None:
    cases = {
        b"": "invalid JSON: EOF while parsing a value at line 1 column 0",
        b"[]": "body: Input should be an object",
        b'{"saga": "order", "input": {}}': "field key: Field required",
        b'{"key": "k"}': "field saga: Field required",
    }
    for body, reason in cases.items():
        with pytest.raises(Poison) as raised:
            parse(StartSaga, delivery(body))
        assert reason in str(raised.value)
    with pytest.raises(Poison, match="text/plain is not accepted: JSON only"):
        parse(StartSaga, delivery(b"{}", "text/plain"))
    with pytest.raises(Poison, match="exceeds the limit of 10 bytes"):
        parse(StartSaga, b'{"saga": "order"}', max_bytes=10)


def test_parse_with_fields_sets_the_command_name_from_outside_the_body() -> None:
    cmd = command("payments.charge")
    parsed = parse(
        Command, delivery(cmd.model_dump_json().encode()), fields={"command": "payments.charge"}
    )
    assert parsed == cmd
    with pytest.raises(Poison, match="invalid JSON"):
        parse(Command, delivery(b"{oops"), fields={"command": "x.y"})
    with pytest.raises(Poison, match="expected a JSON object, got list"):
        parse(Command, delivery(b"[1]"), fields={"command": "x.y"})


def test_requeue_backoff_grows_and_is_capped() -> None:
    delays = [backoff(n) for n in range(12)]
    assert delays[0] == pytest.approx(0.1)
    assert delays == sorted(delays)
    assert max(delays) == 10.0
    # What a message survives of an outage before the default limit dead-letters it.
    assert sum(delays[: DEFAULT_DELIVERY_LIMIT + 1]) > 45


async def _ready(value: bool) -> bool:
    return value
