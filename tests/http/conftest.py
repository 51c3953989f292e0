"""The HTTP app in-process (httpx over ASGI), on a real PostgreSQL database of the test's own.

The engine behind it publishes to the in-memory publisher: what the API owns ends at the
engine's committed transaction (state, history, outbox), and publishing that outbox to
RabbitMQ is the engine's business, tested against the real broker elsewhere. The fake lets
a test play the participants itself (`Api.reply`) and walk a saga to exactly the state it
needs (past the pivot, parked, compensating) in milliseconds, with no process to wait for.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

from adapters.clock import utcnow
from adapters.http.app import create_app
from adapters.memory.publisher import MemoryPublisher
from adapters.postgres.store import PostgresStore
from adapters.settings import Settings
from orchestrator import Saga
from orchestrator.engine import Engine
from orchestrator.messages import Reply, ReplyError
from orchestrator.registry import Registry
from sagas import order

OPERATOR = "ops-token-4f1c9a77e2"
READER = "read-token-b83d0c51aa"
TOKENS = f"ops:operate:{OPERATOR},viewer:read:{READER}"


class Anything(BaseModel):
    """Any JSON object: a vault saga's input keeps whatever fields it is given."""

    model_config = ConfigDict(extra="allow")


# For redaction: an input with fields of the caller's choosing.
vault = Saga("vault", version=1, input=Anything)
vault.remote("store_secret", command="vault.store", compensation="vault.erase")


class Owned(BaseModel):
    user: str


# For semantic locks: a second start on a held user is rejected, or queued.
exclusive = Saga("exclusive", version=1, input=Owned, locks=("user:{user}",), on_locked="reject")
exclusive.remote("use", command="vault.use", compensation=None)
patient = Saga("patient", version=1, input=Owned, locks=("user:{user}",), on_locked="queue")
patient.remote("use", command="vault.use", compensation=None)

# For data flow: a payload built from an earlier result, and an output (with a secret in it).
receipt = Saga(
    "receipt",
    version=1,
    input=Anything,
    output=lambda ctx: {"charge": ctx.results["pay"]["charge"], "token": "t-1"},
)
receipt.remote("pay", command="vault.pay", compensation=None)
receipt.remote(
    "mail",
    command="vault.mail",
    compensation=None,
    payload=lambda ctx: {"charge": ctx.results["pay"]["charge"]},
)

# The order saga as the tests play it: v2 (parallel reservations, results of any shape).
SAGAS = (order.order_v2, order.order_v1, vault, exclusive, patient, receipt)


def order_input(order_id: str = "o-1", **extra: Any) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "c-1",
        "amount": "25.00",
        "items": [{"sku": "SKU-BOOK", "qty": 1}],
        **extra,
    }


@dataclass
class Api:
    client: httpx.AsyncClient
    engine: Engine
    publisher: MemoryPublisher
    store: PostgresStore
    app: FastAPI

    async def start(
        self, key: str, input: dict[str, Any] | None = None, saga: str = "order", **body: Any
    ) -> UUID:
        answer = await self.client.post(
            "/api/sagas",
            json={"saga": saga, "key": key, "input": input or order_input(key), **body},
        )
        assert answer.status_code == 201, answer.text
        return UUID(answer.json()["saga_id"])

    async def reply(
        self,
        saga_id: UUID,
        step: str,
        *,
        ok: bool = True,
        kind: str = "action",
        result: Any = None,
    ) -> None:
        """Answer the latest command of `step` (`kind`) of the saga, as its participant would;
        a failure is not retryable."""
        commands = [
            json.loads(m.body) for m in self.publisher.published if m.exchange == "saga.commands"
        ]
        command = [
            c
            for c in commands
            if c["saga_id"] == str(saga_id) and c["step"] == step and c["kind"] == kind
        ][-1]
        await self.engine.reply(
            Reply(
                command_id=command["command_id"],
                saga_id=saga_id,
                step=step,
                outcome="success" if ok else "failure",
                result=result if ok else None,
                error=None if ok else ReplyError(type="declined", message="no", retryable=False),
            )
        )

    async def past_pivot(self, key: str) -> UUID:
        """A saga whose pivot (charge_payment) was dispatched: it can be cancelled no more."""
        saga_id = await self.start(key)
        await self.reply(saga_id, "reserve_credit")
        await self.reply(saga_id, "reserve_stock")
        return saga_id

    async def parked(self, key: str) -> UUID:
        """A saga parked past the pivot: notify_customer failed for good."""
        saga_id = await self.past_pivot(key)
        await self.reply(saga_id, "charge_payment")
        await self.reply(saga_id, "notify_customer", ok=False)
        return saga_id

    async def parked_compensating(self, key: str) -> UUID:
        """A saga parked while compensating: reserve_stock failed, releasing credit failed."""
        saga_id = await self.start(key)
        await self.reply(saga_id, "reserve_credit")
        await self.reply(saga_id, "reserve_stock", ok=False)
        await self.reply(saga_id, "reserve_credit", ok=False, kind="compensation")
        return saga_id


@pytest.fixture
async def make_api(pg_store: PostgresStore) -> AsyncIterator[Callable[..., Any]]:
    """`await make_api(**settings)` -> Api; `engine=False` for a read-only app; `sagas`: the
    definitions it loads."""
    clients: list[httpx.AsyncClient] = []

    async def make(
        *,
        engine: bool = True,
        headers: dict[str, str] | None = None,
        sagas: Sequence[Saga] = SAGAS,
        **settings: Any,
    ) -> Api:
        publisher = MemoryPublisher()
        registry = Registry(sagas)
        core = Engine(pg_store, publisher, registry, clock=utcnow)
        app = create_app(Settings(**settings), pg_store, core if engine else None)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api.test", headers=headers
        )
        clients.append(client)
        return Api(client, core, publisher, pg_store, app)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def api(make_api: Callable[..., Any]) -> Api:
    """No tokens configured: open, as on loopback."""
    made: Api = await make_api()
    return made


def assert_problem(answer: httpx.Response, status: int, *, says: str = "") -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert set(body) == {"type", "title", "status", "detail"}
    assert body["status"] == status and body["type"].startswith("urn:saga:problem:")
    assert says in body["detail"], body["detail"]
    return body
