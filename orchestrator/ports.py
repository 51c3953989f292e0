"""Ports: what the engine needs from the outside world. Adapters implement them.

Every port has an in-memory fake (adapters/memory) and a real adapter; both pass the same
contract tests (tests/contract).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from orchestrator.machine import HistoryEntry
from orchestrator.state import SagaState, SagaStatus

Clock = Callable[[], datetime]
# Named crash points for fault-injection tests; the production hook does nothing.
FaultHook = Callable[[str], None]


class Exchange:
    """Logical exchange names of wire protocol v1; the transport may prefix them."""

    SAGAS = "sagas"
    COMMANDS = "saga.commands"
    EVENTS = "saga.events"
    DEAD = "saga.dead"
    DEFAULT = ""  # the default exchange: routing key = queue name (replies)


REPLY_QUEUE = "saga.replies"


@dataclass(frozen=True)
class OutboxMessage:
    """A message written in the transaction that decided it, published after commit."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    reply_to: str | None = None
    id: int | None = None  # assigned by the store


@dataclass(frozen=True)
class DefinitionRecord:
    name: str
    version: int
    fingerprint: str
    document: dict[str, Any]


@dataclass(frozen=True)
class HistoryRecord:
    saga_id: UUID
    seq: int
    at: datetime
    event: str
    step: str | None
    detail: dict[str, Any] | None
    actor: str


@dataclass(frozen=True)
class SagaQuery:
    status: SagaStatus | None = None
    saga: str | None = None
    key: str | None = None
    limit: int = 50


class SagaTransaction(Protocol):
    """One database transaction. Everything written through it commits together or not at all."""

    async def insert(self, state: SagaState) -> bool:
        """Create the saga; False (and nothing written) when (name, key) exists already."""

    async def lock(self, saga_id: UUID) -> SagaState | None:
        """Load the saga and hold its lock until the transaction ends."""

    async def lock_by_key(self, key: str, saga: str | None) -> list[SagaState]:
        """Lock every saga with that start key (of that saga name, when given)."""

    async def claim_due(self, now: datetime, limit: int) -> list[SagaState]:
        """Lock sagas whose next timer is due, skipping those another process holds."""

    async def save(self, before: SagaState, after: SagaState) -> None:
        """Persist a transition; `after.revision` must be `before.revision + 1`."""

    async def append_history(
        self, saga_id: UUID, entries: Sequence[HistoryEntry], actor: str
    ) -> None: ...

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
        """Store messages to publish; returns them with their ids."""

    async def hold_cancel(self, key: str, saga: str | None, reason: str) -> None:
        """Remember a cancel whose saga has not started yet."""

    async def take_held_cancel(self, saga: str, key: str) -> str | None:
        """Consume a remembered cancel for this start; returns its reason."""

    async def claim_outbox(self, older_than: timedelta, limit: int) -> list[OutboxMessage]:
        """Lock unpublished messages written more than `older_than` ago, oldest first.

        Age is measured on the store's own clock (the database's `now()`), which also stamps
        the rows: an orchestrator whose clock is skewed cannot make the relay race the fast path.
        """

    async def delete_outbox(self, ids: Sequence[int]) -> None: ...


class SagaStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[SagaTransaction]: ...

    async def register(self, record: DefinitionRecord) -> bool:
        """Record a definition; True if new. Raises DefinitionConflict when the
        (name, version) exists with another fingerprint."""

    async def get(self, saga_id: UUID) -> SagaState | None: ...

    async def find(self, query: SagaQuery) -> list[SagaState]: ...

    async def history(self, saga_id: UUID) -> list[HistoryRecord]: ...

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        """Forget published messages (outside any saga transaction)."""


class Publisher(Protocol):
    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Publish and wait for the broker's confirms; raise if any was not confirmed."""
