"""The application service: load state, `decide`, persist state + history + outbox in one
transaction, then publish what was decided. The imperative shell around the pure machine.

Each use case below is one unit of work (orchestrator/unit_of_work.py), or one per batch:
starting sagas is in orchestrator/starting.py, semantic locks in orchestrator/semantic_locks.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import structlog

from orchestrator import machine
from orchestrator.bulk import (
    BulkAction,
    BulkActions,
    BulkReport,
    cancel_refused,
    record_refusal,
)
from orchestrator.error_info import ErrorInfo
from orchestrator.errors import OperationRefused, SagaNotFound
from orchestrator.event_names import HistoryEvent
from orchestrator.machine import (
    CancelRequested,
    OperatorEvent,
    ReplyReceived,
    TimersDue,
)
from orchestrator.messages import CancelSaga, Reply, SignalSaga, StartSaga
from orchestrator.ports import Clock, Publisher, SagaQuery, SagaStore
from orchestrator.registry import Registry
from orchestrator.semantic_locks import SemanticLocks
from orchestrator.signalling import SignalOutcome, deliver
from orchestrator.starting import Starter, StartOutcome
from orchestrator.state import SagaState, SagaStatus
from orchestrator.unit_of_work import Change, Observer, Spans, UnitsOfWork

log = structlog.get_logger(__name__)


def _ignore(_event: HistoryEvent, _detail: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class CancelOutcome:
    """`held` when no saga had the key yet: the cancel waits for its start."""

    sagas: tuple[tuple[UUID, SagaStatus], ...]
    held: bool = False
    refused: str | None = None


class Engine:
    def __init__(
        self,
        store: SagaStore,
        publisher: Publisher,
        registry: Registry,
        *,
        clock: Clock,
        new_id: Callable[[], UUID] = uuid.uuid4,
        observe: Observer = _ignore,
        unconsumed: Callable[[], Mapping[str, str]] = dict,
        spans: Spans | None = None,
    ) -> None:
        """`unconsumed`: command -> queue, for the commands whose queue had no consumer at
        the last look (adapters/rabbitmq/command_queues.py); a timeout of one says so.
        `spans`: told each committed transition, to make spans (unit_of_work.Spans)."""
        self.store = store
        self.publisher = publisher
        self.registry = registry
        self.clock = clock
        self.unconsumed = unconsumed
        self._locks = SemanticLocks(registry, clock=clock, new_id=new_id)
        self._units = UnitsOfWork(store, publisher, self._locks, observe=observe, spans=spans)
        self._starter = Starter(self._units, registry, self._locks, clock=clock, new_id=new_id)
        self._bulk = BulkActions(self._units, store, registry, clock=clock)

    # -- inbound --------------------------------------------------------------------------

    async def start(
        self,
        request: StartSaga,
        actor: str = "broker",
        *,
        trace: Mapping[str, str] | None = None,
    ) -> StartOutcome:
        """Start a saga, or return the one that already has this key (idempotent).
        `trace`: the W3C trace context the request came with (orchestrator/trace.py); the
        saga keeps it and every message it sends carries it. Not kept by a start that waits
        for a semantic lock."""
        return await self._starter.start(request, actor, trace)

    async def starts(
        self,
        requests: Sequence[tuple[StartSaga, Mapping[str, str] | None]],
        actor: str = "broker",
    ) -> list[StartOutcome]:
        """`start` for many (request, trace) at once: their sagas start in one transaction
        (group commit), with the outcome of each in order. A start that needs semantic locks,
        or a child's that cannot start, goes through `start` after it. Raises as `start` does
        for the first start that cannot be made (nothing of the batch is then started)."""
        return await self._starter.start_many(requests, actor)

    async def reject_start(
        self, saga: str | None, key: str | None, error: ErrorInfo, *, message_id: str
    ) -> None:
        """Announce a start its caller dead-letters (an unknown saga, invalid input, a body
        that is no valid start: `error` says which and why) as a `<saga>.rejected` outcome
        event, through the outbox as a lock's rejection is: a sender in any language hears
        why nothing started. `saga` None (no valid saga name in the body) makes it
        `saga.rejected`; `key` None, a start without a usable key. `message_id`: the
        event's, the same when the same start is judged again (a redelivery)."""
        async with self._units() as uow:
            await self._locks.reject(
                uow,
                saga,
                key,
                error,
                parent=None,
                event=HistoryEvent.SAGA_START_INVALID,
                message_id=message_id,
            )

    async def cancel(
        self, request: CancelSaga, actor: str = "broker", *, hold: bool = True
    ) -> CancelOutcome:
        """Cancel the sagas `request` names. A key that no saga, nor a start waiting for its
        semantic locks, has yet: with `hold`, the cancel is held and applies to the start
        when it comes (a message may overtake its start); without (an operator, for whom
        such a key is most likely a typo), SagaNotFound and nothing is held."""
        now = self.clock()
        results: list[tuple[UUID, SagaStatus]] = []
        refused: str | None = None
        async with self._units() as uow:
            if request.saga_id is not None:
                found = await uow.tx.lock(request.saga_id)
                if found is None:
                    raise SagaNotFound(f"no saga with id {request.saga_id}")
                states = [found]
            else:
                assert request.key is not None
                states = await uow.tx.lock_by_key(request.key, request.saga)
                if not states:
                    # A start waiting for its semantic locks ends cancelled at once, without
                    # running a step; its place in the queue goes to whoever waits behind it.
                    waiting = await uow.tx.remove_lock_waiters(request.key, request.saga)
                    if not waiting:
                        if not hold:
                            where = "" if request.saga is None else f" for saga {request.saga!r}"
                            raise SagaNotFound(
                                f"no saga has key {request.key!r}{where}, and no start with it "
                                "waits for a semantic lock: nothing to cancel"
                            )
                        await uow.tx.hold_cancel(request.key, request.saga, request.reason)
                        log.info("saga_cancel_held", key=request.key, saga=request.saga)
                        return CancelOutcome(sagas=(), held=True)
                    for waiter in waiting:
                        ended = await self._locks.start_waiter(uow, waiter, actor, request.reason)
                        if ended is not None:
                            results.append((ended.saga_id, ended.status))
                    await self._locks.grant(uow, sorted({r for w in waiting for r in w.resources}))
            for state in states:
                definition = self.registry.get(state.name, state.version)
                event: machine.Event = (
                    CancelRequested(request.reason)
                    if request.parent is None
                    else machine.UndoRequested(request.reason, request.parent)
                )
                decision = machine.decide(definition, state, event, now)
                await uow.write(decision, actor, before=state)
                results.append((state.saga_id, decision.state.status))
                refused = refused or cancel_refused(decision)
        return CancelOutcome(sagas=tuple(results), refused=refused)

    async def signal(self, request: SignalSaga, actor: str = "broker") -> SignalOutcome:
        """Deliver a signal to the wait step it names, of the saga `request` names: taken
        by a waiting step, held for one not begun yet, a duplicate of one held or taken
        (nothing changes), or refused (recorded in the saga's history where there is a saga,
        and announced as `<saga>.signal_refused`). Signal ids are the sender's idempotency
        keys: delivering one twice is safe."""
        async with self._units() as uow:
            return await deliver(uow, self.registry, request, self.clock(), actor)

    async def operate(self, saga_id: UUID, action: OperatorEvent, actor: str) -> SagaState:
        """An operator's action (pause, resume, retry, skip, mark-compensated) on one saga,
        recorded in its history with `actor` and the action's reason. Raises SagaNotFound,
        or OperationRefused saying why the action does not apply now."""
        if not action.reason.strip():
            why = "say why: operator actions are recorded with a reason"
            await self._record_refusal(saga_id, action, actor, why)
            raise OperationRefused(why)
        now = self.clock()
        async with self._units() as uow:
            state = await uow.tx.lock(saga_id)
            if state is None:
                raise SagaNotFound(f"no saga with id {saga_id}")
            definition = self.registry.get(state.name, state.version)
            decision = machine.decide(definition, state, action, now)
            if decision.refused is None:
                saved = await uow.write(decision, actor, before=state)
        if decision.refused is not None:
            await self._record_refusal(saga_id, action, actor, decision.refused)
            raise OperationRefused(decision.refused)
        return saved

    async def bulk(
        self,
        query: SagaQuery,
        action: BulkAction,
        actor: str,
        *,
        limit: int,
        dry_run: bool = False,
    ) -> BulkReport:
        """`action` (an operator action, or a cancel) on every saga `query` matches, up to
        `limit` of them, in batches of a transaction each (orchestrator/bulk.py): how many
        it was applied to, and each one refused with why (its state moved since it was
        listed, or the action does not apply to it), every one recorded in its saga's
        history with `actor` and the reason. `dry_run`: the same report, on the sagas as
        listed, and nothing written. Raises NoFilter for a query without a filter, and
        OperationRefused without a reason."""
        return await self._bulk.run(query, action, actor, limit=limit, dry_run=dry_run)

    async def _record_refusal(
        self, saga_id: UUID, action: OperatorEvent, actor: str, why: str
    ) -> None:
        """Record a refused operator action in the saga's history, in a transaction of its
        own (the refused one wrote nothing): the audit trail shows who tried what, and why
        it was refused. Nothing to record when there is no such saga."""
        async with self._units() as uow:
            state = await uow.tx.lock(saga_id)
            if state is None:
                return
            await record_refusal(uow, state, action, actor, why)

    async def reply(self, reply: Reply) -> bool:
        """Apply a participant's reply; False when it named no known saga.

        Either way the caller acks it: a reply that cannot be applied now never can be.
        """
        return (await self.replies([reply]))[0]

    async def replies(self, replies: Sequence[Reply]) -> list[bool]:
        """Apply many replies in one transaction (group commit): for each, whether it named
        a known saga. A saga with several replies here takes them in order, one transition
        each, as if they had come in one by one. If anything fails, nothing is applied."""
        now = self.clock()
        known = [False] * len(replies)
        async with self._units() as uow:
            pending = list(enumerate(replies))
            while pending:
                # One reply per saga per round: each round's transitions are decided on the
                # states the previous round saved.
                round_: dict[UUID, tuple[int, Reply]] = {}
                later: list[tuple[int, Reply]] = []
                for n, r in pending:
                    if r.saga_id in round_:
                        later.append((n, r))
                    else:
                        round_[r.saga_id] = (n, r)
                states = await uow.tx.lock_all(list(round_))
                changes: list[Change] = []
                for state in states:
                    n, r = round_[state.saga_id]
                    known[n] = True
                    definition = self.registry.get(state.name, state.version)
                    decision = machine.decide(definition, state, ReplyReceived(r), now)
                    changes.append(Change(decision, "engine", state))
                await uow.write_all(changes)
                pending = later
            for r, found in zip(replies, known, strict=True):
                if not found:
                    # No saga row, so no history to record it in (the saga never existed
                    # here, or retention removed it): this log line and the counter are its
                    # only trace.
                    detail = {
                        "reason": "unknown saga",
                        "saga_id": str(r.saga_id),
                        "step": r.step,
                        "command_id": str(r.command_id),
                        "outcome": r.outcome,
                    }
                    uow.warn(HistoryEvent.REPLY_IGNORED, detail)
        return known

    async def fire_timers(self, limit: int = 100) -> int:
        """Handle sagas whose timeout or retry time has come; returns how many."""
        now = self.clock()
        due = TimersDue(self.unconsumed())
        async with self._units() as uow:
            states = await uow.tx.claim_due(now, limit)
            changes = [
                Change(
                    machine.decide(self.registry.get(state.name, state.version), state, due, now),
                    "engine",
                    state,
                )
                for state in states
            ]
            await uow.write_all(changes)
        return len(states)

    async def sweep_locks(self, limit: int = 100) -> int:
        """Reject the waiting starts whose `lock_wait` has run out, and start the waiting
        ones whose resources are free; returns how many waiters it handled. Starting them is
        a backstop: the transaction that frees a resource starts its waiters itself, but
        leaves one another transaction is busy with (or one an expiry unblocked) to this."""
        now = self.clock()
        async with self._units() as uow:
            expired = await uow.tx.expire_lock_waiters(now, limit)
            for waiter in expired:
                await self._locks.reject(
                    uow,
                    waiter.saga,
                    waiter.key,
                    waiter.expired_error(now),
                    parent=waiter.parent,
                    event=HistoryEvent.LOCK_WAIT_EXPIRED,
                )
            granted = await self._locks.grant(uow, None, limit)
        return len(expired) + granted

    async def relay(self, older_than: timedelta = timedelta(seconds=2), limit: int = 500) -> int:
        """Delete the rows published since the last sweep, then publish what a crash (or a
        broker outage) left in the outbox. Sweep more often than `older_than`, so that what
        this replica sent is gone before any relay considers it left behind."""
        await self.forget_published()
        async with self.store.transaction() as tx:
            messages = await tx.claim_outbox(older_than, limit)
            if messages:
                await self.publisher.publish(messages)
                await tx.delete_outbox([m.id for m in messages if m.id is not None])
        if messages:
            log.info("outbox_relayed", count=len(messages))
        return len(messages)

    async def forget_published(self) -> None:
        """Delete the outbox rows published after commit since the last call, in one
        statement. If that fails, they are kept for the next call."""
        await self._units.forget_published()
