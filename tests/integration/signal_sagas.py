"""Sagas with wait steps and their participant, for the signal tests on real PostgreSQL and
RabbitMQ (tests/integration/test_signals*.py), and how those tests send signals and read
what became of them.

An insurance claim: open the claim (undone by closing it) -> wait for the signal `approval`
(an adjuster's verdict, `Approval`) -> pay (the pivot; its guard lets only an approved claim
through, its payload names the adjuster) -> notify (retried, never undone). Variants wait
0.5 s for the approval (a timeout before the pivot), or wait for a `receipt` after paying (a
timeout past the pivot). The `claims` participant records every command it gets and can hold
`claims.open` in flight until the test lets it go.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from structlog.typing import EventDict

from adapters.participant import Participant
from orchestrator import Retry, Saga
from orchestrator.definition import GuardContext
from orchestrator.messages import Command, SignalSaga
from orchestrator.ports import HistoryRecord
from tests.fixtures.polling import eventually
from tests.integration.harness import System


class Claim(BaseModel):
    claim_id: str


class Approval(BaseModel):
    """The payload of the signal `approval`."""

    model_config = ConfigDict(extra="forbid")

    approved: bool
    by: str = Field(min_length=1)


def approved(ctx: GuardContext) -> bool:
    return ctx.result("approval", Approval).approved


def payout(ctx: GuardContext) -> dict[str, Any]:
    """What `claims.pay` and `claims.notify` are sent: the claim and who approved it."""
    return {"claim_id": ctx.input["claim_id"], "approved_by": ctx.result("approval", Approval).by}


def claim_saga(name: str, *, wait: float) -> Saga:
    saga = Saga(name, version=1, input=Claim, timeout=10)
    saga.remote("open", command="claims.open", compensation="claims.close")
    saga.wait("approval", timeout=wait, result=Approval)
    saga.remote(
        "pay",
        command="claims.pay",
        pivot=True,
        retry=Retry(max_attempts=1),
        guard=approved,
        on_guard_false="fail",
        payload=payout,
    )
    saga.remote("notify", command="claims.notify", payload=payout)
    return saga


# Waits long enough for any test to send its signal.
claim = claim_saga("claim", wait=30.0)
# Waits half a second: its timeout passes within a test.
claim_quick = claim_saga("claim_quick", wait=0.5)

# Paid first, then it waits half a second for the payee's receipt: past the pivot.
claim_receipt = Saga("claim_receipt", version=1, input=Claim, timeout=10)
claim_receipt.remote("open", command="claims.open", compensation="claims.close")
claim_receipt.remote("pay", command="claims.pay", pivot=True, retry=Retry(max_attempts=1))
claim_receipt.wait("receipt", timeout=0.5)
claim_receipt.remote("notify", command="claims.notify")

SAGAS = [claim, claim_quick, claim_receipt]


class Claims:
    """The `claims` participant: answers every command at once, except `claims.open` of a
    claim the test holds, which stays in flight until it is let go."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self._gates: dict[str, asyncio.Event] = {}

    def hold(self, claim_id: str) -> None:
        self._gates[claim_id] = asyncio.Event()

    def let_go(self, claim_id: str) -> None:
        self._gates[claim_id].set()

    def sent(self, command: str, claim_id: str) -> list[Command]:
        return [
            c
            for c in self.commands
            if c.command == command and c.payload.get("claim_id") == claim_id
        ]

    def participant(self) -> Participant:
        claims = Participant("claims")

        @claims.handler("claims.open")
        async def open_claim(cmd: Command) -> dict[str, Any]:
            self.commands.append(cmd)
            gate = self._gates.get(str(cmd.payload["claim_id"]))
            if gate is not None:
                await gate.wait()
            return {"opened": cmd.payload["claim_id"]}

        for name in ("claims.close", "claims.pay", "claims.notify"):

            @claims.handler(name)
            async def answer(cmd: Command) -> dict[str, Any]:
                self.commands.append(cmd)
                return {"done": cmd.command}

        return claims


async def send_signal(
    system: System,
    signal: str,
    signal_id: str,
    payload: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    saga_id: UUID | None = None,
    saga: str | None = None,
) -> None:
    """Publish a signal to the `sagas` exchange (routing key `signal`), as any sender would."""
    body = SignalSaga(
        key=key,
        saga_id=saga_id,
        saga=saga,
        signal=signal,
        signal_id=signal_id,
        payload=payload or {},
    )
    await system.send("signal", body)


async def delivered(logs: list[EventDict], signal_id: str, count: int = 1) -> list[str]:
    """What the orchestrator made of the signals with `signal_id` (taken, held, duplicate,
    refused), once it handled `count` of them: its `signal_delivered` log lines, as captured
    by structlog.testing.capture_logs with the context variables merged."""

    async def probe() -> list[str] | None:
        seen = [
            str(e["result"])
            for e in logs
            if e.get("event") == "signal_delivered" and e.get("signal_id") == signal_id
        ]
        return seen if len(seen) >= count else None

    return await eventually(probe, message=f"{count} deliveries of signal {signal_id}")


async def reached(system: System, key: str, event: str, step: str | None = None) -> UUID:
    """Wait until the history of the saga with `key` records `event` (of `step`)."""

    async def probe() -> UUID | None:
        state = await system.saga_by_key(key)
        if state is None:
            return None
        history = await system.history(state.saga_id)
        return state.saga_id if any(h.event == event and h.step == step for h in history) else None

    return await eventually(probe, message=f"saga {key} to record {event} {step or ''}")


def entries(history: list[HistoryRecord], event: str) -> list[dict[str, Any]]:
    """The details of the history entries of `event`."""
    return [dict(h.detail or {}) for h in history if h.event == event]
