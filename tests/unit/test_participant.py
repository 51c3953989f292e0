"""The participant SDK core: every command gets a reply, whatever its handler does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapters.participant.core import Participant, StepFailed
from orchestrator.errors import DefinitionError
from orchestrator.messages import Command, Reply

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def command(name: str = "payments.charge", *, expires_at: datetime | None = None) -> Command:
    return Command(
        command_id=uuid.uuid4(),
        saga_id=uuid.uuid4(),
        saga="order",
        step="charge_payment",
        kind="action",
        attempt=2,
        idempotency_key="order-42:charge_payment:action",
        payload={"amount": 10},
        expires_at=expires_at or NOW + timedelta(seconds=30),
        command=name,
    )


def payments() -> tuple[Participant, list[Command]]:
    participant = Participant("payments")
    calls: list[Command] = []

    @participant.handler("payments.charge")
    async def charge(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        return {"charged": cmd.payload["amount"]}

    @participant.handler("payments.refund")
    async def refund(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        return None

    @participant.handler("payments.decline")
    async def decline(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        raise StepFailed("insufficient_funds", "card declined", retryable=False)

    @participant.handler("payments.crash")
    async def crash(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        raise ConnectionError("bank unreachable")

    @participant.handler("fraud.check")
    async def odd_result(cmd: Command) -> dict[str, Any] | None:
        calls.append(cmd)
        return {"at": object()}

    return participant, calls


def assert_answers(reply: Reply, cmd: Command) -> None:
    assert (reply.command_id, reply.saga_id, reply.step) == (cmd.command_id, cmd.saga_id, cmd.step)


async def test_success_carries_the_handlers_result() -> None:
    participant, calls = payments()
    cmd = command()

    reply = await participant.handle(cmd, NOW)

    assert_answers(reply, cmd)
    assert (reply.outcome, reply.result, reply.error) == ("success", {"charged": 10}, None)
    assert calls == [cmd]
    assert (await participant.handle(command("payments.refund"), NOW)).result is None


async def test_an_unknown_command_fails_for_good() -> None:
    participant, calls = payments()
    cmd = command("payments.teleport")

    reply = await participant.handle(cmd, NOW)

    assert_answers(reply, cmd)
    assert reply.outcome == "failure"
    assert reply.error is not None
    assert (reply.error.type, reply.error.retryable) == ("unknown_command", False)
    assert "payments.teleport" in reply.error.message
    assert calls == []


@pytest.mark.parametrize(
    "expires_at",
    [NOW, NOW - timedelta(seconds=1), (NOW - timedelta(seconds=1)).replace(tzinfo=None)],
    ids=["at-the-deadline", "after-it", "naive-means-utc"],
)
async def test_an_expired_command_is_not_run(expires_at: datetime) -> None:
    participant, calls = payments()
    cmd = command(expires_at=expires_at)

    reply = await participant.handle(cmd, NOW)

    assert_answers(reply, cmd)
    assert reply.outcome == "failure"
    assert reply.error is not None
    assert (reply.error.type, reply.error.retryable) == ("expired", True)
    assert calls == []


async def test_a_command_just_before_its_deadline_runs() -> None:
    participant, calls = payments()
    cmd = command(expires_at=NOW + timedelta(milliseconds=1))
    assert (await participant.handle(cmd, NOW)).outcome == "success"
    assert calls == [cmd]


async def test_step_failed_becomes_a_failure_reply() -> None:
    participant, _ = payments()

    reply = await participant.handle(command("payments.decline"), NOW)

    assert reply.outcome == "failure"
    assert reply.error is not None
    assert (reply.error.type, reply.error.message, reply.error.retryable) == (
        "insufficient_funds",
        "card declined",
        False,
    )


async def test_an_exception_becomes_a_retryable_failure_named_after_it() -> None:
    participant, _ = payments()

    reply = await participant.handle(command("payments.crash"), NOW)

    assert reply.outcome == "failure"
    assert reply.error is not None
    assert (reply.error.type, reply.error.message, reply.error.retryable) == (
        "ConnectionError",
        "bank unreachable",
        True,
    )


async def test_a_result_that_is_not_json_fails_instead_of_crashing_the_reply() -> None:
    participant, _ = payments()

    reply = await participant.handle(command("fraud.check"), NOW)

    assert reply.outcome == "failure"
    assert reply.error is not None
    assert (reply.error.type, reply.error.retryable) == ("invalid_result", False)
    reply.model_dump_json()  # the reply itself can be sent


async def test_long_error_text_is_cut_to_what_a_reply_allows() -> None:
    participant = Participant("payments")

    @participant.handler("payments.charge")
    async def charge(cmd: Command) -> dict[str, Any] | None:
        raise StepFailed("t" * 500, "m" * 20_000)

    reply = await participant.handle(command(), NOW)
    assert reply.error is not None
    assert (len(reply.error.type), len(reply.error.message)) == (200, 10_000)


def test_commands_and_services_list_what_is_registered() -> None:
    participant, _ = payments()
    assert participant.commands() == [
        "fraud.check",
        "payments.charge",
        "payments.crash",
        "payments.decline",
        "payments.refund",
    ]
    assert participant.services() == {"payments", "fraud"}


def test_registration_mistakes_are_refused_with_the_fix() -> None:
    participant, _ = payments()
    with pytest.raises(DefinitionError, match="has a handler already"):
        participant.handler("payments.charge")
    with pytest.raises(DefinitionError, match=r"'<service>\.<command>'"):
        participant.handler("charge")

    def not_async(cmd: Command) -> None:
        return None

    with pytest.raises(DefinitionError, match="must be an 'async def' function"):
        participant.handler("payments.sync")(not_async)  # type: ignore[type-var]
