"""deploy/rabbitmq/definitions.json declares exactly what adapters/rabbitmq/topology.py
declares (names, types, arguments, bindings): a queue pre-declared with other arguments would
make every `saga run` fail with PRECONDITION_FAILED. Then the real proof: import the file into
a vhost of our own on the real broker and let the real Topology declare over it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from adapters.rabbitmq.topology import Topology
from orchestrator.registry import load_modules
from tests.deploy import code_facts as facts
from tests.fixtures.polling import eventually

DEFINITIONS = facts.DEPLOY / "rabbitmq" / "definitions.json"


@dataclass
class Recorder:
    """Stands in for an aio-pika channel and writes down what the Topology declares."""

    exchanges: dict[str, str] = field(default_factory=dict)
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    bindings: set[tuple[str, str, str]] = field(default_factory=set)

    async def declare_exchange(self, name: str, kind: Any, *, durable: bool) -> None:
        assert durable
        self.exchanges[name] = str(kind.value)

    async def declare_queue(self, name: str, *, durable: bool, arguments: dict[str, Any]) -> Any:
        assert durable
        self.queues[name] = arguments
        recorder = self

        class Queue:
            async def bind(self, exchange: str, routing_key: str) -> None:
                recorder.bindings.add((exchange, name, routing_key))

            async def unbind(self, exchange: str, routing_key: str) -> None:
                recorder.bindings.discard((exchange, name, routing_key))

        return Queue()


def declared_by_the_code() -> Recorder:
    """What `saga run` declares for the sagas compose runs (SAGA_MODULES=sagas.order)."""
    recorder = Recorder()
    topology = Topology("")

    async def declare() -> None:
        await topology.declare_core(recorder)  # type: ignore[arg-type]
        for service in topology.services_of(load_modules(["sagas.order"]).commands()):
            await topology.declare_service(recorder, service)  # type: ignore[arg-type]

    asyncio.run(declare())
    return recorder


def declared_by_the_file(doc: dict[str, Any]) -> Recorder:
    recorder = Recorder()
    recorder.exchanges = {e["name"]: e["type"] for e in doc["exchanges"] if e["durable"]}
    recorder.queues = {q["name"]: q["arguments"] for q in doc["queues"] if q["durable"]}
    recorder.bindings = {
        (b["source"], b["destination"], b["routing_key"])
        for b in doc["bindings"]
        if b["destination_type"] == "queue"
    }
    return recorder


def mismatches(doc: dict[str, Any]) -> list[str]:
    code, file = declared_by_the_code(), declared_by_the_file(doc)
    return [
        f"{what}: code {getattr(code, what)!r} != file {getattr(file, what)!r}"
        for what in ("exchanges", "queues", "bindings")
        if getattr(code, what) != getattr(file, what)
    ]


def load() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DEFINITIONS.read_text())
    return doc


def test_definitions_declare_what_the_topology_declares() -> None:
    doc = load()
    assert mismatches(doc) == []
    assert all(q["vhost"] == "/" and not q["auto_delete"] for q in doc["queues"])
    changes: tuple[Callable[[dict[str, Any]], object], ...] = (
        lambda d: d["queues"][1]["arguments"].update({"x-delivery-limit": 5}),
        lambda d: d["exchanges"][3].update(type="topic"),
        lambda d: d["bindings"].pop(),
    )
    for change in changes:
        broken = load()
        change(broken)
        assert mismatches(broken) != []


def test_the_dead_letter_policy_agrees_with_the_queue_arguments() -> None:
    import re

    doc = load()
    (policy,) = doc["policies"]
    pattern = re.compile(policy["pattern"])
    code = declared_by_the_code()
    covered = {q for q in code.queues if pattern.search(q)}
    assert covered == {q for q, args in code.queues.items() if "x-dead-letter-exchange" in args}
    # Same values as the arguments: an argument and a policy that disagree leave the reader
    # guessing which one wins.
    args = code.queues["saga.replies"]
    assert policy["definition"] == {
        "dead-letter-exchange": args["x-dead-letter-exchange"],
        "dead-letter-strategy": args["x-dead-letter-strategy"],
        "overflow": args["x-overflow"],
        "delivery-limit": args["x-delivery-limit"],
    }
    assert policy["apply-to"] == "queues"


def test_the_user_has_permissions_and_no_plain_password() -> None:
    doc = load()
    users = {u["name"] for u in doc["users"]}
    assert all("password" not in u for u in doc["users"])
    assert {p["user"] for p in doc["permissions"]} == users
    compose_url = (facts.DEPLOY / "compose.yaml").read_text()
    assert all(f"amqp://{u}:" in compose_url for u in users)


# -- on the real broker ------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def own_vhost() -> Iterator[tuple[str, Path]]:
    """A vhost of this test's own, deleted afterwards, and the definitions rewritten for it
    (topology and policy only: users are the shared broker's business, not ours). The broker
    reads the file itself, as its own user: pytest's tmp_path (mode 0700) is out of reach."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not on this machine")
    vhost = f"saga-deploy-test-{uuid.uuid4().hex[:10]}"
    doc = load()
    for key in ("users", "permissions", "vhosts"):
        doc.pop(key)
    for key in ("queues", "exchanges", "bindings", "policies"):
        for item in doc[key]:
            item["vhost"] = vhost
    folder = Path(tempfile.mkdtemp(prefix="saga-deploy-"))
    folder.chmod(0o755)
    path = folder / "definitions.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o644)
    try:
        rabbitmqctl("add_vhost", vhost)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"rabbitmqctl cannot manage the local broker: {exc}")
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost, path
    finally:
        rabbitmqctl("delete_vhost", vhost)
        shutil.rmtree(folder)


async def test_the_broker_takes_the_file_and_the_engine_declares_over_it(
    own_vhost: tuple[str, Path],
) -> None:
    vhost, path = own_vhost
    rabbitmqctl("import_definitions", str(path))
    connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:5672/{vhost}", timeout=10)
    try:
        # The import runs in the background: wait until every queue of the file exists
        # (a passive declare fails, and closes its channel, while one is missing).
        names = [q["name"] for q in load()["queues"]]

        async def imported() -> bool:
            channel = await connection.channel()
            try:
                for name in names:
                    await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            await channel.close()
            return True

        await eventually(imported, timeout=30, message="the definitions were not imported")
        channel = await connection.channel()
        topology = Topology("")
        # Exactly what `saga run` does at start; PRECONDITION_FAILED on any difference.
        await topology.declare_core(channel)
        for service in facts.shop_services():
            await topology.declare_service(channel, service)
    finally:
        await connection.close()
