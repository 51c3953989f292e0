"""Named fault points for crash tests: `SAGA_FAULT=after_commit_before_publish` (or
`...@3` for the third time the point is reached) kills the process there with SIGKILL,
exactly like `kill -9`.

Nothing here is wired without SAGA_FAULT: `fault_hook` then returns None, and the engine,
the runtime, the participant worker and the starter relay run unwrapped. With it, the process wraps:

- its publisher (`FaultyPublisher`): `after_commit_before_publish` before each publish of
  committed outbox rows, `after_publish_before_outbox_delete` once they are confirmed;
- the orchestrator's message handlers (`crash_after`): `after_commit_before_ack`, once the
  message's transaction has committed and before the consumer acks it;
- a participant (`FaultyParticipant`): `after_handler_before_reply`, once its handler
  returned (a guarded handler's transaction has committed) and before the reply is sent;
- the starter relay's publisher (`FaultyRelayPublisher`, adapters/starter/):
  `starter_after_commit_before_publish` once it has claimed rows a service committed,
  `starter_after_publish_before_delete` once the broker confirmed them.

Each process arms the points of its role only (`REACHES`): a spec naming a point the process
never reaches would never crash it, so a crash test would pass without its crash. It is
refused at start, naming the role and the points it reaches.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Literal, Protocol, TypeVar

import structlog

from adapters.participant.core import Participant
from orchestrator.messages import Command, OutboxMessage, Reply

log = structlog.get_logger(__name__)

# Called with the name of each fault point the process reaches.
Hook = Callable[[str], None]

Role = Literal["orchestrator", "participant", "starter"]

# The points each kind of process reaches: `saga run` (publisher and handlers), a process
# hosting participants (`adapters.participant.serve`), a starter relay.
REACHES: Mapping[Role, frozenset[str]] = {
    "orchestrator": frozenset(
        {
            "after_commit_before_publish",
            "after_publish_before_outbox_delete",
            "after_commit_before_ack",
        }
    ),
    "participant": frozenset({"after_handler_before_reply"}),
    "starter": frozenset(
        {"starter_after_commit_before_publish", "starter_after_publish_before_delete"}
    ),
}
POINTS = frozenset().union(*REACHES.values())


def fault_hook(spec: str | None, role: Role) -> Hook | None:
    """The hook SAGA_FAULT asks for in a process of `role`, or None without one. A bad spec
    (an unknown point, one this role never reaches, a count below 1) raises at once."""
    if not spec:
        return None
    point, _, nth = spec.partition("@")
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; known: {', '.join(sorted(POINTS))}")
    if point not in REACHES[role]:
        raise ValueError(
            f"SAGA_FAULT={spec}: a {role} process never reaches {point!r}, so it would never "
            f"crash; a {role} reaches {', '.join(sorted(REACHES[role]))}"
        )
    try:
        remaining = int(nth) if nth else 1
    except ValueError:
        raise ValueError(
            f"fault count must be a whole number in {spec!r}, e.g. {point}@3"
        ) from None
    if remaining < 1:
        raise ValueError(f"fault count must be >= 1 in {spec!r}")

    def hit(name: str) -> None:
        nonlocal remaining
        if name != point:
            return
        remaining -= 1
        if remaining == 0:
            log.warning("fault_point_crash", point=name)
            os.kill(os.getpid(), signal.SIGKILL)

    return hit


class _Publisher(Protocol):  # orchestrator.ports.Publisher, which a participant need not load
    async def publish(self, messages: Sequence[OutboxMessage]) -> None: ...


class FaultyPublisher:
    """The publisher port with the two outbox fault points around each publish: after
    commit (the rows are stored) and after the broker confirmed (before they are deleted)."""

    before = "after_commit_before_publish"
    after = "after_publish_before_outbox_delete"

    def __init__(self, inner: _Publisher, hit: Hook) -> None:
        self.inner = inner
        self.hit = hit

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        self.hit(self.before)
        await self.inner.publish(messages)
        self.hit(self.after)


class FaultyRelayPublisher(FaultyPublisher):
    """The same around the starter relay's publishes, with points of their own."""

    before = "starter_after_commit_before_publish"
    after = "starter_after_publish_before_delete"


M = TypeVar("M")


def crash_after(
    handler: Callable[[M], Awaitable[None]], hit: Hook
) -> Callable[[M], Awaitable[None]]:
    """`handler` followed by `after_commit_before_ack`: it returns once its transaction has
    committed, and the consumer acks only after it returns."""

    async def handle(message: M) -> None:
        await handler(message)
        hit("after_commit_before_ack")

    return handle


class FaultyParticipant:
    """`inner` with `after_handler_before_reply` between each handler and its reply."""

    def __init__(self, inner: Participant, hit: Hook) -> None:
        self.inner = inner
        self.hit = hit
        self.service = inner.service

    def services(self) -> set[str]:
        return self.inner.services()

    def expired(self, command: Command, now: datetime) -> bool:
        return self.inner.expired(command, now)

    async def handle(self, command: Command, now: datetime) -> Reply:
        reply = await self.inner.handle(command, now)
        self.hit("after_handler_before_reply")
        return reply
