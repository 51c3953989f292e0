"""SAGA_AMQP_URL listing a cluster's nodes: a connection opens to a node that answers and,
when its node goes away, moves to the next and carries on consuming; the starter's relay
and `/readyz` take the list too.

The "nodes" are TCP proxies in front of the shared broker (tests/chaos/proxy.py): a stopped
proxy is a node gone for the connections through it (reset, and new ones refused), while the
queues live on, as quorum queues do on the rest of a cluster. A real three-node cluster losing
its nodes under load is the chaos harness's `cluster` profile (docs/guarantees.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aio_pika import Message
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from structlog.testing import capture_logs

from adapters.http.observability import check_rabbitmq
from adapters.rabbitmq.connection import BrokerUnavailable, connect, open_channel
from adapters.rabbitmq.nodes import NodesConnection
from adapters.rabbitmq.topology import REPLIES_QUEUE, Topology
from adapters.starter.broker import Broker
from orchestrator.messages import Exchange, OutboxMessage
from tests.chaos.proxy import FaultyProxy
from tests.chaos.servers import free_port
from tests.fixtures.rabbitmq import take
from tests.integration.starter_harness import with_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def nodes(amqp_url: str) -> AsyncIterator[list[FaultyProxy]]:
    proxies = [FaultyProxy(f"node-{i}", urlsplit(amqp_url).port or 5672) for i in range(3)]
    for proxy in proxies:
        await proxy.start()
    yield proxies
    for proxy in proxies:
        await proxy.stop()


def listing(amqp_url: str, ports: list[int]) -> str:
    return ",".join(with_port(amqp_url, port) for port in ports)


async def test_a_connection_moves_to_the_next_node_when_its_node_goes_away(
    amqp_url: str, nodes: list[FaultyProxy], topology: Topology, amqp_channel: AbstractRobustChannel
) -> None:
    connection = await connect(listing(amqp_url, [p.listen_port for p in nodes]), name="nodes")
    assert isinstance(connection, NodesConnection)
    try:
        channel = await open_channel(connection)
        queue = await topology.declare_queue(channel, REPLIES_QUEUE)
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_message(message: AbstractIncomingMessage) -> None:
            await message.ack()
            await got.put(message.body)

        await queue.consume(on_message)
        (on,) = [p for p in nodes if p.listen_port == connection.url.port]
        with capture_logs() as logs:
            await on.stop()  # its node is gone: the connection is reset, new ones refused
            # Published beside the cluster's clients: only a consumer restored on another
            # node can take it.
            await amqp_channel.default_exchange.publish(Message(b"after"), queue.name)
            assert await asyncio.wait_for(got.get(), 30) == b"after"
        assert connection.url.port != on.listen_port
        [moved] = [e for e in logs if e["event"] == "amqp_next_node"]
        assert moved["left"].endswith(f":{on.listen_port}/")
        assert moved["next"].endswith(f":{connection.url.port}/")
    finally:
        await connection.close()


async def test_nodes_that_do_not_answer_are_skipped_at_the_first_connection(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("adapters.rabbitmq.connection.random.randrange", lambda n: 0)
    dead = [free_port(), free_port()]
    with capture_logs() as logs:
        connection = await connect(listing(amqp_url, [*dead, urlsplit(amqp_url).port or 5672]))
    assert isinstance(connection, NodesConnection)
    try:
        assert connection.url.port == (urlsplit(amqp_url).port or 5672)
        failed = [e["url"] for e in logs if e["event"] == "amqp_connect_failed"]
        assert [url.rsplit(":", 1)[1] for url in failed] == [f"{port}/" for port in dead]
    finally:
        await connection.close()


async def test_no_node_answering_fails_at_once_naming_each(amqp_url: str) -> None:
    dead = [free_port(), free_port()]
    with pytest.raises(
        BrokerUnavailable, match="cannot connect to any of the 2 RabbitMQ nodes"
    ) as e:
        await connect(listing(amqp_url, dead))
    assert all(f":{port}/: " in str(e.value) for port in dead)
    assert e.value.unreachable, "nothing answered: a start-up may wait for the nodes"


async def test_a_node_that_refuses_us_is_not_waited_for(amqp_url: str) -> None:
    """One node answered, refusing the login: waiting for the others would not mend that."""
    wrong = urlsplit(amqp_url)._replace(
        netloc=f"guest:not-the-password@{urlsplit(amqp_url).hostname}"
    )
    live = with_port(wrong.geturl(), urlsplit(amqp_url).port or 5672)
    with pytest.raises(BrokerUnavailable, match="access refused") as e:
        await connect(f"{with_port(wrong.geturl(), free_port())},{live}")
    assert not e.value.unreachable


async def test_the_starter_publishes_through_a_list_whose_first_node_is_gone(
    amqp_url: str,
    topology: Topology,
    amqp_channel: AbstractRobustChannel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("adapters.rabbitmq.connection.random.randrange", lambda n: 0)
    await topology.declare_queue(amqp_channel, REPLIES_QUEUE)
    broker = Broker(
        listing(amqp_url, [free_port(), urlsplit(amqp_url).port or 5672]), topology.prefix
    )
    try:
        await broker.publish(
            [OutboxMessage(Exchange.DEFAULT, REPLIES_QUEUE, b'{"n": 1}', message_id="m-1")]
        )
    finally:
        await broker.close()
    assert [m.body for m in await take(amqp_channel, topology.name(REPLIES_QUEUE))] == [b'{"n": 1}']


def test_the_starter_refuses_a_malformed_list_before_it_runs() -> None:
    with pytest.raises(ValueError, match="entry 2, 'ftp://b/', is not an amqp"):
        Broker("amqp://a/,ftp://b/")


async def test_readiness_needs_one_node_that_answers(amqp_url: str) -> None:
    live = urlsplit(amqp_url).port or 5672
    await check_rabbitmq(listing(amqp_url, [free_port(), live, free_port()]), timeout=2)
    with pytest.raises(ConnectionError):
        await check_rabbitmq(listing(amqp_url, [free_port(), free_port()]), timeout=2)
