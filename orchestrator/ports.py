"""Ports: what the engine needs from the outside world. Adapters implement them.

Every port has an in-memory fake (adapters/memory) and a real adapter (adapters/postgres,
adapters/rabbitmq); both pass the same contract suite, one module of tests/contract per port:
`SagaTransaction` in test_saga_transactions.py and its semantic locks in
test_semantic_locks.py, the reads of `SagaStore` in test_saga_queries.py (its search fields
in test_saga_search.py) and its definitions in test_definitions.py, `Publisher` in
test_publisher.py.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from orchestrator.locks import LockConflict, LocksView, LockWaiter
from orchestrator.machine import HistoryEntry
from orchestrator.messages import OutboxMessage
from orchestrator.search_fields import SearchValue
from orchestrator.search_filters import SearchCondition
from orchestrator.state import SagaState, SagaStatus

Clock = Callable[[], datetime]


class Registration(StrEnum):
    """What registering a definition did."""

    NEW = "new"
    UNCHANGED = "unchanged"
    REPLACED = "replaced"  # a development database's changed version (SAGA_DEV_REDEFINE)


@dataclass(frozen=True)
class DefinitionRecord:
    name: str
    version: int
    fingerprint: str
    document: dict[str, Any]


@dataclass(frozen=True)
class RegisteredDefinition:
    """A row of the definitions table: what some process once registered."""

    name: str
    version: int
    fingerprint: str
    registered_at: datetime


@dataclass(frozen=True)
class VersionInUse:
    """A saga version that unfinished instances still run on: it must stay loaded."""

    name: str
    version: int
    unfinished: int


@dataclass(frozen=True)
class HistoryRecord:
    saga_id: UUID
    seq: int
    at: datetime
    # A HistoryEvent's value (it compares equal to the member); a plain str, as the rows
    # hold whatever release wrote them.
    event: str
    step: str | None
    detail: dict[str, Any] | None
    actor: str


@dataclass(frozen=True)
class WaitingFor:
    """Sagas waiting now for the signal `signal`: their step of that name runs with no
    command in flight, and their (name, version) is one of `definitions`, those where the
    step is a wait (`Registry.waiting_for`: a running sleep looks the same in the tables)."""

    signal: str
    definitions: frozenset[tuple[str, int]]


@dataclass(frozen=True)
class SagaQuery:
    """Which sagas `SagaStore.find` lists, newest activity first (updated_at, then id, both
    descending). Every filter given must hold."""

    status: SagaStatus | None = None
    saga: str | None = None
    key: str | None = None
    limit: int = 50
    version: int | None = None
    # Sagas with a step of this name running or compensating now, or failed and parked.
    step: str | None = None
    # Sagas waiting now for a signal.
    waiting_for: WaitingFor | None = None
    # Created in [created_after, created_before).
    created_after: datetime | None = None
    created_before: datetime | None = None
    # In their current status for at least this long (by `status_since`, on the store's clock).
    in_status_for: timedelta | None = None
    # Conditions on search fields (orchestrator/search_filters.py), every one must hold.
    where: tuple[SearchCondition, ...] = ()
    # Keyset pagination: only sagas that sort after this (updated_at, saga_id), i.e. the last
    # one of the previous page. A saga that changes while pages are read moves to the front:
    # it is never listed twice, and is found again by starting over.
    after: tuple[datetime, UUID] | None = None


# (before, after) of one transition per saga; (saga_id, entries, actor) of history appends.
Transitions = Sequence[tuple[SagaState, SagaState]]
HistoryAppends = Sequence[tuple[UUID, Sequence[HistoryEntry], str]]
# (saga_id, value) of search field values to store; a value replaces the saga's earlier one
# of that field.
SearchWrites = Sequence[tuple[UUID, SearchValue]]


class SagaTransaction(Protocol):
    """One database transaction. Everything written through it commits together or not at all."""

    async def insert(self, state: SagaState) -> bool:
        """Create the saga; False (and nothing written) when (name, key) exists already."""

    async def insert_all(self, states: Sequence[SagaState]) -> set[UUID]:
        """`insert` for many sagas at once; returns the ids of those inserted (a saga whose
        (name, key) exists already, or comes twice, is left out)."""

    async def lock(self, saga_id: UUID) -> SagaState | None:
        """Load the saga and hold its lock until the transaction ends."""

    async def lock_all(self, saga_ids: Sequence[UUID]) -> list[SagaState]:
        """`lock` for many sagas at once, in id order (those that exist): transactions that
        lock overlapping sets this way cannot deadlock."""

    async def lock_by_key(self, key: str, saga: str | None) -> list[SagaState]:
        """Lock every saga with that start key (of that saga name, when given)."""

    async def claim_due(self, now: datetime, limit: int) -> list[SagaState]:
        """Lock sagas whose next timer is due, skipping those another process holds."""

    async def append_history(
        self, saga_id: UUID, entries: Sequence[HistoryEntry], actor: str
    ) -> None:
        """Append entries to the saga's history, numbered on from its last one; raises
        SagaNotFound when no such saga exists."""

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
        """Store messages to publish; returns them with their ids."""

    async def save_batch(
        self,
        changes: Transitions,
        appends: HistoryAppends,
        messages: Sequence[OutboxMessage],
        search: SearchWrites = (),
    ) -> list[OutboxMessage]:
        """Everything a batch of transitions writes, which a store may do in one round trip:

        - `changes`, one (before, after) per saga: `after` must be the same saga at revision
          `before.revision + 1`, with no step removed (ValueError); raises ConcurrentUpdate if
          a saga is no longer at `before.revision` (or does not exist);
        - `appends`, `append_history` for each (saga_id, entries, actor);
        - `messages`, as `add_outbox`: returned with their ids;
        - `search`, search field values of sagas that exist (inserted in this transaction,
          or among `changes`), which `find`'s `where` conditions then match."""

    async def hold_cancel(self, key: str, saga: str | None, reason: str) -> None:
        """Remember a cancel whose saga has not started yet."""

    async def take_held_cancel(self, saga: str, key: str) -> str | None:
        """Consume a remembered cancel for this start; returns its reason."""

    async def take_held_cancels(
        self, starts: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """`take_held_cancel` for many (saga, key) starts at once: the reason of each that
        had a cancel held."""

    async def claim_outbox(self, older_than: timedelta, limit: int) -> list[OutboxMessage]:
        """Lock unpublished messages written more than `older_than` ago, oldest first.

        Age is measured on the store's own clock (the database's `now()`), which also stamps
        the rows: an orchestrator whose clock is skewed cannot make the relay race the fast path.
        """

    async def delete_outbox(self, ids: Sequence[int]) -> None: ...

    # -- semantic locks (orchestrator/locks.py) -------------------------------------------
    # A saga's resources are taken in the transaction that starts it and given back in the
    # one that finishes it; waiting starts are started in that same transaction.

    async def acquire_locks(
        self,
        resources: Sequence[str],
        *,
        saga_id: UUID,
        saga: str,
        key: str,
        now: datetime,
        waited_as: int | None = None,
    ) -> LockConflict | None:
        """Take every one of `resources` (sorted) for the saga, or none. None when taken;
        else the first conflict: a resource another saga holds, or one that live waiters
        queue for (a new start never overtakes them). For a start taken off the queue,
        `waited_as` is its waiter id: only waiters older than it bar it. Waits while another
        transaction takes or gives back one of these resources. The saga row may be inserted
        after this, in the same transaction."""

    async def release_locks(self, saga_id: UUID) -> tuple[str, ...]:
        """Give back every resource the saga holds; returns them, sorted."""

    async def enqueue_lock_waiter(self, waiter: LockWaiter) -> bool:
        """Queue a start behind its resources; False (and nothing written) when a start with
        that (saga, key) waits already."""

    async def claim_lock_waiters(
        self,
        now: datetime,
        *,
        freed: Sequence[str] | None,
        sagas: Collection[tuple[str, int]],
        limit: int,
    ) -> list[LockWaiter]:
        """Remove from the queue, oldest first, the live waiters (not expired at `now`)
        that may start now: each of their resources is free, and no older live waiter wants
        any of them (nor a waiter claimed before it in this call). Only waiters of `sagas`
        ((name, version) this process can start), and with `freed` only waiters of one of
        those resources. The caller acquires and starts each one in this transaction.
        A waiter another transaction is busy with is left for a later sweep."""

    async def expire_lock_waiters(self, now: datetime, limit: int) -> list[LockWaiter]:
        """Remove waiters whose `expires_at` is at or before `now`, oldest first, skipping
        those another transaction holds; returns them."""

    async def remove_lock_waiters(self, key: str, saga: str | None) -> list[LockWaiter]:
        """Remove the waiting starts with this key (of that saga, when given): a cancel."""


class SagaStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[SagaTransaction]: ...

    async def register(
        self, record: DefinitionRecord, *, replace_unused: bool = False
    ) -> Registration:
        """Record a definition. When the (name, version) exists with another fingerprint,
        replace it if `replace_unused` and no unfinished instance runs on it (checked in the
        same transaction), else raise DefinitionConflict saying what changed."""

    async def definitions(self) -> list[RegisteredDefinition]:
        """Every registered definition, by name then version."""

    async def versions_in_use(self) -> list[VersionInUse]:
        """The (name, version) that unfinished instances run on, with how many, by name then
        version. Unfinished: any status but those no saga leaves (`versioning.ENDED`), so
        paused and parked sagas count: an operator may move them on."""

    async def get(self, saga_id: UUID) -> SagaState | None: ...

    async def find(self, query: SagaQuery) -> list[SagaState]: ...

    async def count_by_status(self, saga: str | None = None) -> dict[SagaStatus, int]:
        """How many sagas (of that name, when given) are in each status; every status is a
        key, 0 included."""

    async def history(self, saga_id: UUID) -> list[HistoryRecord]: ...

    async def locks(self) -> LocksView:
        """Every held semantic lock and every waiting start, oldest first (for operators)."""


class Publisher(Protocol):
    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Publish and wait for the broker's confirms. Raises `errors.PublishFailed` naming
        each message the broker did not confirm; the others of the batch are confirmed and
        will be delivered. Publishing nothing confirms nothing and never fails."""
