"""Semantic locks in memory: the held resources and the waiting starts of one MemoryStore.

Transactions of the fake never overlap, so the advisory locks of the Postgres adapter have
no counterpart here; the rules (all or none, oldest waiter first, expiry) are the same.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from uuid import UUID

from orchestrator.locks import HeldLock, LockConflict, LocksView, LockWaiter
from orchestrator.state import SagaStatus


@dataclass
class MemoryLocks:
    held: dict[str, HeldLock] = field(default_factory=dict)
    waiting: dict[int, LockWaiter] = field(default_factory=dict)
    last_id: int = 0

    def copy(self) -> MemoryLocks:
        # Shallow is enough: the values are immutable.
        return replace(self, held=dict(self.held), waiting=dict(self.waiting))

    def acquire(
        self,
        resources: Sequence[str],
        *,
        saga_id: UUID,
        saga: str,
        key: str,
        now: datetime,
        waited_as: int | None = None,
    ) -> LockConflict | None:
        wanted = sorted(set(resources))
        for resource in wanted:
            holder = self.held.get(resource)
            if holder is not None:
                return LockConflict(resource, held_by=holder.saga_id, held_by_key=holder.key)
        for waiter in self._queue(now):
            if waited_as is not None and (waiter.id or 0) >= waited_as:
                break  # younger than the start being served: it queues behind it
            shared = set(wanted) & set(waiter.resources)
            if shared:
                return LockConflict(min(shared), held_by=None)
        for resource in wanted:
            self.held[resource] = HeldLock(resource, saga_id, saga, key, _utc(now))
        return None

    def release(self, saga_id: UUID) -> tuple[str, ...]:
        mine = sorted(r for r, lock in self.held.items() if lock.saga_id == saga_id)
        for resource in mine:
            del self.held[resource]
        return tuple(mine)

    def enqueue(self, waiter: LockWaiter) -> bool:
        if any(w.saga == waiter.saga and w.key == waiter.key for w in self.waiting.values()):
            return False
        self.last_id += 1
        self.waiting[self.last_id] = replace(
            waiter,
            id=self.last_id,
            input=json.loads(json.dumps(waiter.input)),
            resources=tuple(sorted(set(waiter.resources))),
            enqueued_at=_utc(waiter.enqueued_at),
            expires_at=None if waiter.expires_at is None else _utc(waiter.expires_at),
        )
        return True

    def claim(
        self,
        now: datetime,
        *,
        freed: Sequence[str] | None,
        sagas: Collection[tuple[str, int]],
        limit: int,
    ) -> list[LockWaiter]:
        claimed: list[LockWaiter] = []
        barred: set[str] = set()  # wanted by an older live waiter, or just claimed
        for waiter in self._queue(now):
            wanted = set(waiter.resources)
            if (
                len(claimed) < limit
                and (waiter.saga, waiter.version) in sagas
                and (freed is None or wanted & set(freed))
                and not wanted & barred
                and not wanted & set(self.held)
            ):
                assert waiter.id is not None
                del self.waiting[waiter.id]
                claimed.append(waiter)
            barred |= wanted
        return claimed

    def expire(self, now: datetime, limit: int) -> list[LockWaiter]:
        due = [
            w for w in self._ordered() if w.expires_at is not None and w.expires_at <= _utc(now)
        ][:limit]
        for waiter in due:
            assert waiter.id is not None
            del self.waiting[waiter.id]
        return due

    def remove(self, key: str, saga: str | None) -> list[LockWaiter]:
        gone = [w for w in self._ordered() if w.key == key and saga in (None, w.saga)]
        for waiter in gone:
            assert waiter.id is not None
            del self.waiting[waiter.id]
        return gone

    def view(self, statuses: Mapping[UUID, SagaStatus]) -> LocksView:
        held = sorted(self.held.values(), key=lambda h: (h.acquired_at, h.resource))
        return LocksView(
            held=tuple(replace(h, status=statuses.get(h.saga_id)) for h in held),
            waiting=tuple(self._ordered()),
        )

    def _ordered(self) -> list[LockWaiter]:
        return [self.waiting[i] for i in sorted(self.waiting)]

    def _queue(self, now: datetime) -> list[LockWaiter]:
        """The live waiters, oldest first: an expired one bars nobody."""
        return [w for w in self._ordered() if w.expires_at is None or w.expires_at > _utc(now)]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
