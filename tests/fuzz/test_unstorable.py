"""What the fuzzer found: a message pydantic accepts but PostgreSQL cannot store (a NUL
character, a number that is not finite) failed its transaction on every delivery, a requeue
loop the broker ended a minute later by dead-lettering it without a reason. Now it is
dead-lettered at once, saying why, and the messages around it go through."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from adapters.rabbitmq.consumer import DEAD_REASON_HEADER
from orchestrator.ports import SagaQuery
from tests.fuzz.conftest import FuzzSystem
from tests.fuzz.probes import SAGA, Dead, Probe

START = b'{"saga": "%s", "key": "%s", "input": {"ticket_id": "t", "note": %s}}'


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'"a\\u0000b"', "NUL character"),
        (b'{"\\u0000": 1}', "NUL character"),
        (b"1e400", "not finite"),
        (b"[-Infinity]", "not finite"),
        (b"NaN", "not finite"),
    ],
)
async def test_a_start_postgres_cannot_store_is_dead_lettered_at_once(
    fuzz_system: FuzzSystem, value: bytes, reason: str
) -> None:
    system = fuzz_system
    body = START % (SAGA.encode(), b"unstorable", value)
    await system.publish(Probe("start", "requests", "start", body, Dead(reason)), "unstorable")
    await system.start("after")

    deadline = time.monotonic() + 20
    while "unstorable" not in system.dead or not await _completed(system, "after"):
        assert time.monotonic() < deadline, "not dead-lettered, or the next start stuck"
        await asyncio.sleep(0.05)

    assert reason in str((system.dead["unstorable"].headers or {})[DEAD_REASON_HEADER])
    assert not await system.store.find(SagaQuery(key="unstorable"))
    failures = [e for e in system.logs if e.get("event") == "message_handler_failed"]
    assert failures == []


async def _completed(system: FuzzSystem, key: str) -> Any:
    found = await system.store.find(SagaQuery(key=key, limit=1))
    return found and found[0].status == "completed"
