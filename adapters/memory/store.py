"""MemoryStore: the SagaStore port in memory.

One lock held for a whole transaction serialises them all, which is stricter than Postgres
(row locks, SKIP LOCKED) but allowed by the contract. A transaction works on a copy of the
data and swaps it in on commit, so an exception leaves nothing behind.

Over 400 lines for a reason: it is one fake of one port (store, transaction and queries), kept
in one file so the whole of what the contract suites check of it reads in one place.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from adapters.memory.semantic_locks import MemoryLocks
from orchestrator.definition_diff import changes
from orchestrator.errors import ConcurrentUpdate, DefinitionConflict, SagaNotFound
from orchestrator.locks import LockConflict, LocksView, LockWaiter
from orchestrator.machine import HistoryEntry
from orchestrator.messages import OutboxMessage
from orchestrator.ports import (
    Clock,
    DefinitionRecord,
    HistoryAppends,
    HistoryRecord,
    RegisteredDefinition,
    Registration,
    SagaQuery,
    SearchWrites,
    Transitions,
    VersionInUse,
    WaitingFor,
)
from orchestrator.search_fields import SearchValue
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from orchestrator.versioning import UNFINISHED


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class _Held:
    id: int
    key: str
    saga: str | None
    reason: str


@dataclass
class _Data:
    sagas: dict[UUID, SagaState] = field(default_factory=dict)
    history: dict[UUID, tuple[HistoryRecord, ...]] = field(default_factory=dict)
    outbox: dict[int, tuple[OutboxMessage, datetime]] = field(default_factory=dict)
    # Each saga's search field values, by field name.
    search: dict[UUID, dict[str, SearchValue]] = field(default_factory=dict)
    held: tuple[_Held, ...] = ()
    last_id: int = 0  # shared by outbox and inbox rows: only uniqueness and order matter
    semantic: MemoryLocks = field(default_factory=MemoryLocks)

    def copy(self) -> _Data:
        # Shallow is enough: every value inside is immutable.
        return replace(
            self,
            sagas=dict(self.sagas),
            history=dict(self.history),
            outbox=dict(self.outbox),
            search=dict(self.search),
            semantic=self.semantic.copy(),
        )

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id


class MemoryTransaction:
    def __init__(self, data: _Data, clock: Clock) -> None:
        self.data = data
        self._clock = clock

    async def insert_all(self, states: Sequence[SagaState]) -> set[UUID]:
        return {s.saga_id for s in states if await self.insert(s)}

    async def insert(self, state: SagaState) -> bool:
        if state.saga_id in self.data.sagas:
            raise ValueError(f"saga id {state.saga_id} is taken already")
        if any(s.name == state.name and s.key == state.key for s in self.data.sagas.values()):
            return False
        self.data.sagas[state.saga_id] = _stored(state)
        return True

    async def lock(self, saga_id: UUID) -> SagaState | None:
        return self.data.sagas.get(saga_id)

    async def lock_all(self, saga_ids: Sequence[UUID]) -> list[SagaState]:
        return [self.data.sagas[i] for i in sorted(set(saga_ids)) if i in self.data.sagas]

    async def lock_by_key(self, key: str, saga: str | None) -> list[SagaState]:
        found = [
            s for s in self.data.sagas.values() if s.key == key and (saga is None or s.name == saga)
        ]
        return sorted(found, key=lambda s: s.created_at)

    async def claim_due(self, now: datetime, limit: int) -> list[SagaState]:
        due = [
            s
            for s in self.data.sagas.values()
            if s.next_due_at is not None and s.next_due_at <= now
        ]
        return sorted(due, key=lambda s: s.next_due_at or now)[:limit]

    async def save_batch(
        self,
        changes: Transitions,
        appends: HistoryAppends,
        messages: Sequence[OutboxMessage],
        search: SearchWrites = (),
    ) -> list[OutboxMessage]:
        for before, after in changes:
            self._save(before, after)
        for saga_id, entries, actor in appends:
            await self.append_history(saga_id, entries, actor)
        for saga_id, value in search:
            if saga_id not in self.data.sagas:
                raise SagaNotFound(f"no saga instance for this write (search of {saga_id})")
            self.data.search[saga_id] = {**self.data.search.get(saga_id, {}), value.name: value}
        return await self.add_outbox(messages)

    def _save(self, before: SagaState, after: SagaState) -> None:
        _check_transition(before, after)
        current = self.data.sagas.get(before.saga_id)
        if current is None or current.revision != before.revision:
            raise ConcurrentUpdate(
                f"saga {before.saga_id} is no longer at revision {before.revision}; "
                "reload it and decide again"
            )
        # The same columns the Postgres adapter writes: identity and input never change.
        self.data.sagas[before.saga_id] = _stored(
            replace(
                current,
                status=after.status,
                steps=after.steps,
                cancel_reason=after.cancel_reason,
                error=after.error,
                revision=after.revision,
                updated_at=after.updated_at,
                deadline_at=after.deadline_at,
                compensation_deadline_at=after.compensation_deadline_at,
                resume_status=after.resume_status,
                parent=after.parent,
                status_since=after.status_since,
                output=after.output,
            )
        )

    async def append_history(
        self, saga_id: UUID, entries: Sequence[HistoryEntry], actor: str
    ) -> None:
        if not entries:
            return
        if saga_id not in self.data.sagas:
            raise SagaNotFound(f"no saga instance for this write (history of {saga_id})")
        known = self.data.history.get(saga_id, ())
        at = _utc(self._clock())
        self.data.history[saga_id] = known + tuple(
            HistoryRecord(
                saga_id=saga_id,
                seq=len(known) + n,
                at=at,
                event=e.event,
                step=e.step,
                detail=_json(e.detail),
                actor=actor,
            )
            for n, e in enumerate(entries, start=1)
        )

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
        now = _utc(self._clock())
        stored = [replace(m, id=self.data.next_id()) for m in messages]
        for m in stored:
            assert m.id is not None
            self.data.outbox[m.id] = (m, now)
        return stored

    async def hold_cancel(self, key: str, saga: str | None, reason: str) -> None:
        self.data.held += (_Held(self.data.next_id(), key, saga, reason),)

    async def take_held_cancels(
        self, starts: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        taken = {(saga, key): await self.take_held_cancel(saga, key) for saga, key in starts}
        return {start: reason for start, reason in taken.items() if reason is not None}

    async def take_held_cancel(self, saga: str, key: str) -> str | None:
        taken = [h for h in self.data.held if h.key == key and h.saga in (None, saga)]
        self.data.held = tuple(h for h in self.data.held if h not in taken)
        return taken[0].reason if taken else None

    async def claim_outbox(self, older_than: timedelta, limit: int) -> list[OutboxMessage]:
        created_before = _utc(self._clock()) - older_than
        old = [m for m, created in self.data.outbox.values() if created < created_before]
        return sorted(old, key=lambda m: m.id or 0)[:limit]

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        for i in ids:
            self.data.outbox.pop(i, None)

    # -- semantic locks: adapters/memory/semantic_locks.py --------------------------------

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
        return self.data.semantic.acquire(
            resources, saga_id=saga_id, saga=saga, key=key, now=now, waited_as=waited_as
        )

    async def release_locks(self, saga_id: UUID) -> tuple[str, ...]:
        return self.data.semantic.release(saga_id)

    async def enqueue_lock_waiter(self, waiter: LockWaiter) -> bool:
        return self.data.semantic.enqueue(waiter)

    async def claim_lock_waiters(
        self,
        now: datetime,
        *,
        freed: Sequence[str] | None,
        sagas: Collection[tuple[str, int]],
        limit: int,
    ) -> list[LockWaiter]:
        return self.data.semantic.claim(now, freed=freed, sagas=sagas, limit=limit)

    async def expire_lock_waiters(self, now: datetime, limit: int) -> list[LockWaiter]:
        return self.data.semantic.expire(now, limit)

    async def remove_lock_waiters(self, key: str, saga: str | None) -> list[LockWaiter]:
        return self.data.semantic.remove(key, saga)


class MemoryStore:
    def __init__(self, clock: Clock = _utcnow) -> None:
        self._clock = clock
        self._data = _Data()
        self._definitions: dict[tuple[str, int], DefinitionRecord] = {}
        self._registered_at: dict[tuple[str, int], datetime] = {}
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTransaction]:
        async with self._lock:
            tx = MemoryTransaction(self._data.copy(), self._clock)
            yield tx
            self._data = tx.data

    async def register(
        self, record: DefinitionRecord, *, replace_unused: bool = False
    ) -> Registration:
        key = (record.name, record.version)
        registered = self._definitions.get(key)
        if registered is not None and registered.fingerprint == record.fingerprint:
            return Registration.UNCHANGED
        if registered is not None:
            in_use = any(
                v.name == record.name and v.version == record.version
                for v in await self.versions_in_use()
            )
            if not replace_unused or in_use:
                raise DefinitionConflict(
                    record.name, record.version, changes(registered.document, record.document)
                )
        self._definitions[key] = replace(record, document=_json(record.document))
        self._registered_at[key] = _utc(self._clock())
        return Registration.NEW if registered is None else Registration.REPLACED

    async def definitions(self) -> list[RegisteredDefinition]:
        return [
            RegisteredDefinition(r.name, r.version, r.fingerprint, self._registered_at[key])
            for key, r in sorted(self._definitions.items())
        ]

    async def versions_in_use(self) -> list[VersionInUse]:
        counts: dict[tuple[str, int], int] = {}
        sagas = self._data.sagas
        for s in sagas.values():
            # A completed child saga whose parent may still undo it needs its version too.
            parent = sagas.get(s.parent.saga_id) if s.parent is not None else None
            undoable = (
                s.status == SagaStatus.COMPLETED
                and parent is not None
                and parent.status in UNFINISHED
            )
            if s.status in UNFINISHED or undoable:
                counts[(s.name, s.version)] = counts.get((s.name, s.version), 0) + 1
        return [VersionInUse(n, v, count) for (n, v), count in sorted(counts.items())]

    async def get(self, saga_id: UUID) -> SagaState | None:
        return self._data.sagas.get(saga_id)

    async def find(self, query: SagaQuery) -> list[SagaState]:
        since = None if query.in_status_for is None else _utc(self._clock()) - query.in_status_for
        found = [
            s
            for s in self._data.sagas.values()
            if _matches(s, query, since) and _found_by(self._data.search.get(s.saga_id), query)
        ]
        found.sort(key=lambda s: (s.updated_at, s.saga_id), reverse=True)
        return found[: query.limit]

    async def count_by_status(self, saga: str | None = None) -> dict[SagaStatus, int]:
        counts = dict.fromkeys(SagaStatus, 0)
        for s in self._data.sagas.values():
            if saga is None or s.name == saga:
                counts[s.status] += 1
        return counts

    async def history(self, saga_id: UUID) -> list[HistoryRecord]:
        return list(self._data.history.get(saga_id, ()))

    async def locks(self) -> LocksView:
        return self._data.semantic.view({i: s.status for i, s in self._data.sagas.items()})


def _matches(s: SagaState, query: SagaQuery, in_status_since: datetime | None) -> bool:
    """`in_status_since`: the latest `status_since` that `query.in_status_for` allows."""
    return (
        (query.status is None or s.status == query.status)
        and (query.saga is None or s.name == query.saga)
        and (query.key is None or s.key == query.key)
        and (query.version is None or s.version == query.version)
        and (query.created_after is None or s.created_at >= _utc(query.created_after))
        and (query.created_before is None or s.created_at < _utc(query.created_before))
        and (
            in_status_since is None
            or (s.status_since is not None and s.status_since <= in_status_since)
        )
        and (query.step is None or _holds_step(s, query.step))
        and (query.waiting_for is None or _waits(s, query.waiting_for))
        and (
            query.after is None
            or (s.updated_at, s.saga_id) < (_utc(query.after[0]), query.after[1])
        )
    )


def _found_by(values: dict[str, SearchValue] | None, query: SagaQuery) -> bool:
    """Every search condition holds for the saga's stored values."""
    return all(c.holds((values or {}).get(c.name)) for c in query.where)


def _holds_step(state: SagaState, name: str) -> bool:
    """The step runs or compensates now, or failed and parks the saga."""
    return any(
        s.name == name
        and (
            s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)
            or (s.status == StepStatus.FAILED and state.status == SagaStatus.FAILED)
        )
        for s in state.steps
    )


def _waits(state: SagaState, waiting: WaitingFor) -> bool:
    """The step named as the signal runs with no command, in a definition where it is a wait."""
    return (state.name, state.version) in waiting.definitions and any(
        s.name == waiting.signal and s.status == StepStatus.RUNNING and s.command_id is None
        for s in state.steps
    )


def _check_transition(before: SagaState, after: SagaState) -> None:
    if after.saga_id != before.saga_id:
        raise ValueError(f"save: before is saga {before.saga_id}, after is saga {after.saga_id}")
    if after.revision != before.revision + 1:
        raise ValueError(
            f"save: after.revision must be {before.revision + 1}, not {after.revision}"
        )
    if len(after.steps) < len(before.steps):
        raise ValueError("save: a transition cannot remove steps")


def _stored(state: SagaState) -> SagaState:
    """What a round trip through Postgres would give back: JSON values, UTC datetimes."""
    return replace(
        state,
        input=_json(state.input),
        error=_json(state.error),
        output=_json(state.output),
        created_at=_utc(state.created_at),
        updated_at=_utc(state.updated_at),
        deadline_at=_utc_or_none(state.deadline_at),
        compensation_deadline_at=_utc_or_none(state.compensation_deadline_at),
        status_since=_utc_or_none(state.status_since),
        steps=tuple(_stored_step(s) for s in state.steps),
    )


def _stored_step(step: StepState) -> StepState:
    return replace(
        step,
        result=_json(step.result),
        error=_json(step.error),
        progress=_json(step.progress),
        payload=_json(step.payload),
        due_at=_utc_or_none(step.due_at),
        started_at=_utc_or_none(step.started_at),
        dispatched_at=_utc_or_none(step.dispatched_at),
        close_at=_utc_or_none(step.close_at),
    )


def _utc_or_none(moment: datetime | None) -> datetime | None:
    return None if moment is None else _utc(moment)


def _json(value: Any) -> Any:
    # Also refuses what Postgres would refuse: values JSON cannot hold.
    return None if value is None else json.loads(json.dumps(value))


def _utc(moment: datetime) -> datetime:
    # A naive datetime is read as UTC, as the Postgres session (timezone=UTC) reads it.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
