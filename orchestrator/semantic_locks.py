"""The engine's side of semantic locks (orchestrator/locks.py is the pure side): a new saga
takes its resources in the transaction that starts it, or is rejected or queued per its
definition's `on_locked`; a finished saga gives them back in the transaction that finishes
it, which starts the waiting starts they free. Also here: how a start that started nothing
is announced (`reject`), for a held lock as for a start that cannot be made at all."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from orchestrator import machine
from orchestrator.error_info import ErrorInfo
from orchestrator.errors import ConcurrentUpdate
from orchestrator.event_names import HistoryEvent
from orchestrator.locks import LockWaiter
from orchestrator.machine import Decision, HistoryEntry
from orchestrator.messages import ParentRef
from orchestrator.outbox import rejection_messages
from orchestrator.ports import Clock, SagaTransaction
from orchestrator.registry import Registry
from orchestrator.saga import Saga
from orchestrator.state import SagaState, SagaStatus
from orchestrator.unit_of_work import UnitOfWork

# A saga gives its semantic locks back when it is done with its resources. Not when parked
# (failed): what it half did may still be inconsistent, and an operator must finish it first.
_GIVES_BACK_LOCKS = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED})
# Waiting starts begun per transaction; a release frees few resources, so few are ever due.
GRANT_BATCH = 100


class AlreadyStarted(Exception):
    """Rolls back a start whose key another transaction took first."""


@dataclass(frozen=True)
class Kept:
    """A start a held resource kept from starting: `rejected` says which resource and who
    holds it; without, the start is queued (it starts when its resources are free)."""

    rejected: str | None = None


class SemanticLocks:
    def __init__(self, registry: Registry, *, clock: Clock, new_id: Callable[[], UUID]) -> None:
        self.registry = registry
        self.clock = clock
        self.new_id = new_id

    async def take(
        self, uow: UnitOfWork, definition: Saga, state: SagaState, resources: Sequence[str]
    ) -> Kept | None:
        """Take a new saga's resources (None: taken, it may start); when one is held, apply
        the definition's `on_locked` policy and say what kept the start from starting."""
        if await uow.tx.lock_by_key(state.key, state.name):
            # The key's own saga may hold these very resources: this start is a duplicate.
            raise AlreadyStarted
        conflict = await uow.tx.acquire_locks(
            resources, saga_id=state.saga_id, saga=state.name, key=state.key, now=state.created_at
        )
        if conflict is None:
            return None
        if definition.on_locked == "reject":
            await self.reject(
                uow,
                state.name,
                state.key,
                conflict.error(),
                parent=state.parent,
                event=HistoryEvent.SAGA_START_REJECTED,
            )
            return Kept(rejected=conflict.describe())
        waiter = LockWaiter(
            saga=state.name,
            version=state.version,
            key=state.key,
            input=state.input,
            resources=tuple(resources),
            enqueued_at=state.created_at,
            expires_at=(
                None
                if definition.lock_wait is None
                else state.created_at + timedelta(seconds=definition.lock_wait)
            ),
            parent=state.parent,
        )
        event = HistoryEvent.SAGA_START_QUEUED
        if not await uow.tx.enqueue_lock_waiter(waiter):
            # This key waits already: nothing more to do.
            event = HistoryEvent.SAGA_START_DUPLICATE
        held_by = None if conflict.held_by is None else str(conflict.held_by)
        fields = {"saga": state.name, "key": state.key, "resource": conflict.resource}
        uow.observe(event, {**fields, "held_by": held_by, "queued": True})
        return Kept()

    async def release(
        self, tx: SagaTransaction, before: SagaState | None, state: SagaState
    ) -> tuple[str, ...]:
        """The resources the saga gives back in `tx` by moving from `before` to `state`: all
        it holds when it has just finished with a definition that locks; else none."""
        gives_back = (
            state.status in _GIVES_BACK_LOCKS
            and (before is None or before.status != state.status)
            and bool(self.registry.get(state.name, state.version).locks)
        )
        return await tx.release_locks(state.saga_id) if gives_back else ()

    async def grant(
        self, uow: UnitOfWork, freed: Sequence[str] | None, limit: int = GRANT_BATCH
    ) -> int:
        """Start, in `uow`, the waiting starts whose resources are free now (of `freed`, or
        any); returns how many."""
        sagas = {(s.name, s.version) for s in self.registry.all() if s.locks}
        if not sagas:
            return 0
        now = self.clock()
        claimed = await uow.tx.claim_lock_waiters(now, freed=freed, sagas=sagas, limit=limit)
        for waiter in claimed:
            cancel_reason = await uow.tx.take_held_cancel(waiter.saga, waiter.key)
            await self.start_waiter(uow, waiter, "engine", cancel_reason)
        return len(claimed)

    async def start_waiter(
        self, uow: UnitOfWork, waiter: LockWaiter, actor: str, cancel_reason: str | None
    ) -> SagaState | None:
        """Start a saga that waited for its resources, taken off the queue in `uow` (or end
        it cancelled at once, with `cancel_reason`). None when its key has a saga already: a
        start of the same key with other input found its own resources free meanwhile."""
        definition = self.registry.get(waiter.saga, waiter.version)
        now = self.clock()
        if await uow.tx.lock_by_key(waiter.key, waiter.saga):
            uow.observe(
                HistoryEvent.SAGA_START_DUPLICATE,
                {"saga": waiter.saga, "key": waiter.key, "queued": True},
            )
            return None
        decision = machine.start(
            definition,
            saga_id=self.new_id(),
            key=waiter.key,
            input=waiter.input,
            now=now,
            cancel_reason=cancel_reason,
            parent=waiter.parent,
        )
        if cancel_reason is None:
            state = decision.state
            conflict = await uow.tx.acquire_locks(
                waiter.resources,
                saga_id=state.saga_id,
                saga=state.name,
                key=state.key,
                now=now,
                waited_as=waiter.id,
            )
            if conflict is not None:  # the claim saw them free: only a lost race gets here
                raise ConcurrentUpdate(f"{conflict.describe()} after all; retry")
            decision = holding(decision, waiter.resources, queued_at=waiter.enqueued_at)
        if not await uow.tx.insert(decision.state):
            raise ConcurrentUpdate(f"saga {waiter.saga!r} key {waiter.key!r} started meanwhile")
        return await uow.write(decision, actor)

    async def reject(
        self,
        uow: UnitOfWork,
        saga: str | None,
        key: str | None,
        error: ErrorInfo,
        *,
        parent: ParentRef | None,
        event: HistoryEvent,
        message_id: str | None = None,
    ) -> None:
        """Tell the starter through a `<saga>.rejected` outcome event: there is no saga, so
        no history either; the event, the log line and the observer are the trace. A child
        saga's parent step is answered with a failure, so it moves on instead of waiting for
        its timeout."""
        await uow.send(
            rejection_messages(
                saga,
                key,
                error,
                parent=parent,
                message_id=message_id or f"{saga}:{key}:rejected:{self.new_id()}",
            )
        )
        fields = error.to_dict()
        detail = {"saga": saga, "key": key, **{k: v for k, v in fields.items() if k != "type"}}
        uow.observe(event, detail)


def holding(
    decision: Decision, resources: Sequence[str], queued_at: datetime | None = None
) -> Decision:
    """The decision with its saga's semantic locks first in its history."""
    detail: dict[str, Any] = {"resources": list(resources)}
    if queued_at is not None:
        detail["queued_at"] = queued_at.isoformat()
    entry = HistoryEntry(HistoryEvent.LOCKS_ACQUIRED, detail=detail)
    return replace(decision, history=(entry, *decision.history))
