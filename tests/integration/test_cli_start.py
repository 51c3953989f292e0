"""`saga start` on the real broker: a start naming no saga of SAGA_MODULES, or with input its
saga refuses, is an error where it is made (one line, exit 2) and nothing is published; a
good one is published as before."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from aio_pika.abc import AbstractRobustChannel

from adapters.rabbitmq.topology import REQUESTS_QUEUE, Topology
from tests.fixtures.rabbitmq import leftovers

ORDER = {
    "order_id": "o-cli",
    "customer_id": "c-1",
    "amount": "10.50",
    "items": [{"sku": "SKU-BOOK", "qty": 1}],
}


async def saga(amqp_url: str, topology: Topology, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "SAGA_AMQP_URL": amqp_url, "SAGA_AMQP_PREFIX": topology.prefix}
    env |= {"SAGA_MODULES": "sagas.order", "SAGA_LOG_FORMAT": "json"}
    env.pop("SAGA_API_URL", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_a_bad_start_is_refused_before_anything_is_published(
    amqp_url: str, topology: Topology, amqp_channel: AbstractRobustChannel
) -> None:
    await topology.declare_core(amqp_channel)
    unknown, invalid, not_an_object, good = await asyncio.gather(
        saga(amqp_url, topology, "start", "nosuch", "--input", "{}"),
        saga(amqp_url, topology, "start", "order", "--input", '{"order_id": "x"}'),
        saga(amqp_url, topology, "start", "order", "--input", "[1]"),
        saga(amqp_url, topology, "start", "order", "--key", "good", "--input", json.dumps(ORDER)),
    )

    assert unknown[0] == 2 and unknown[1] == ""
    assert unknown[2].strip() == (
        "error: no saga named 'nosuch'; known: order (loaded from SAGA_MODULES=sagas.order); "
        "nothing was published"
    )
    assert invalid[0] == 2 and invalid[1] == ""
    assert invalid[2].startswith("error: input for saga 'order' is invalid: customer_id: Field")
    assert len(invalid[2].strip().splitlines()) == 1
    assert not_an_object[0] == 2
    assert not_an_object[2].strip() == "error: --input: Input should be a valid dictionary"
    assert good[:2] == (0, "good\n"), good[2]
    published = await leftovers(amqp_channel, topology.name(REQUESTS_QUEUE))
    assert [json.loads(m.body)["key"] for m in published] == ["good"]
