"""The application service: load state, `decide`, persist state + history + outbox in one
transaction, then publish what was decided. The imperative shell around the pure machine."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import structlog

from orchestrator import locks, machine
from orchestrator.definition import Saga
from orchestrator.errors import (
    ConcurrentUpdate,
    InvalidInput,
    OperationRefused,
    SagaNotFound,
    UnknownSaga,
)
from orchestrator.locks import LockWaiter
from orchestrator.machine import (
    CancelRequested,
    Decision,
    HistoryEntry,
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ReplyReceived,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
    TimersDue,
)
from orchestrator.messages import (
    CancelSaga,
    OutcomeEvent,
    ParentRef,
    Reply,
    ReplyError,
    StartSaga,
)
from orchestrator.ports import (
    REPLY_QUEUE,
    Clock,
    Exchange,
    FaultHook,
    OutboxMessage,
    Publisher,
    SagaQuery,
    SagaStore,
    SagaTransaction,
)
from orchestrator.registry import Registry
from orchestrator.state import SagaState, SagaStatus
from orchestrator.trace import log_fields as trace_log_fields

log = structlog.get_logger("orchestrator.engine")

Observer = Callable[[str, Mapping[str, Any]], None]
"""Told `(event, detail)` for every history entry once its transaction has committed, and for
what leaves no history: `reply_ignored` with reason `unknown saga` (there is no saga row to
record it in), `saga_start_duplicate`, `saga_start_invalid` (a start announced as rejected
before its caller dead-letters it), and the starts a semantic lock kept from starting:
`saga_start_rejected`, `saga_start_queued`, `lock_wait_expired`. Adapters count these
(adapters/metrics.py), so the core needs no metrics library; it must not raise, and must not
block."""


def _ignore(_event: str, _detail: Mapping[str, Any]) -> None:
    return None


# A saga gives its semantic locks back when it is done with its resources. Not when parked
# (failed): what it half did may still be inconsistent, and an operator must finish it first.
_GIVES_BACK_LOCKS = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED})
# Operator actions by the name operators know them by (the CLI's commands, the API's paths).
ACTION_NAMES: dict[type[OperatorEvent], str] = {
    PauseRequested: "pause",
    ResumeRequested: "resume",
    RetryRequested: "retry",
    SkipRequested: "skip",
    MarkCompensated: "mark-compensated",
}
# Waiting starts begun per transaction; a release frees few resources, so few are ever due.
_GRANT_BATCH = 100
# An input field one of two inputs lacks: unequal to any value, null included.
_ABSENT = object()


@dataclass(frozen=True)
class StartOutcome:
    """`saga_id` and `status` are None when no saga was started because a semantic lock is
    held: `rejected` says which resource and who holds it, or `queued` says the start waits
    for its resources (it starts when they are free, or is rejected when its wait runs out).
    `input_differs`: a saga had this key already, started with other input (nothing new
    started: the key was reused, most likely by mistake)."""

    saga_id: UUID | None
    created: bool
    status: SagaStatus | None
    rejected: str | None = None
    queued: bool = False
    input_differs: bool = False


@dataclass(frozen=True)
class CancelOutcome:
    """`held` when no saga had the key yet: the cancel waits for its start."""

    sagas: tuple[tuple[UUID, SagaStatus], ...]
    held: bool = False
    refused: str | None = None


@dataclass(frozen=True)
class _Change:
    """A decision to persist, by whom, and the state it was decided on (None: just inserted)."""

    decision: Decision
    actor: str
    before: SagaState | None


class _AlreadyStarted(Exception):
    """Rolls back a start whose key another transaction took first."""


@dataclass
class _Written:
    """What one transaction wrote that must be acted on only once it has committed: a
    rolled-back (and retried) transition must neither publish nor be counted."""

    outbox: list[OutboxMessage] = field(default_factory=list)
    observed: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        store: SagaStore,
        publisher: Publisher,
        registry: Registry,
        *,
        clock: Clock,
        faults: FaultHook = lambda _point: None,
        new_id: Callable[[], UUID] = uuid.uuid4,
        observe: Observer = _ignore,
        unconsumed: Callable[[], Mapping[str, str]] = dict,
    ) -> None:
        """`unconsumed`: command -> queue, for the commands whose queue had no consumer at
        the last look (adapters/rabbitmq/command_queues.py); a timeout of one says so."""
        self.store = store
        self.publisher = publisher
        self.registry = registry
        self.clock = clock
        self.faults = faults
        self.new_id = new_id
        self.observe = observe
        self.unconsumed = unconsumed
        # Outbox rows published after their commit, deleted in bulk by `forget_published`.
        self._published: list[int] = []

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
        try:
            definition, input, resources = self._validate(request)
        except (UnknownSaga, InvalidInput) as exc:
            if request.parent is None:
                raise  # the caller dead-letters the start with this reason
            # A child that cannot start: its parent's step fails now, with the reason,
            # instead of waiting for its timeout while the start sits in the dead queue.
            await self._refuse_child(request, exc)
            return StartOutcome(None, created=False, status=None, rejected=str(exc))
        if not resources:
            return (await self._start_unlocked({0: (request, trace, definition, input)}, actor))[0]
        now = self.clock()
        written = _Written()
        not_started: StartOutcome | None = None
        try:
            async with self.store.transaction() as tx:
                cancel_reason = await tx.take_held_cancel(definition.name, request.key)
                decision = machine.start(
                    definition,
                    saga_id=self.new_id(),
                    key=request.key,
                    input=input,
                    now=now,
                    cancel_reason=cancel_reason,
                    parent=request.parent,
                    trace=trace,
                )
                # A saga cancelled before it started runs no step: it needs no resource.
                if cancel_reason is None:
                    not_started = await self._take_locks(
                        tx, definition, decision.state, resources, written
                    )
                    decision = _holding(decision, resources)
                if not_started is None:
                    if not await tx.insert(decision.state):
                        raise _AlreadyStarted
                    await self._write(tx, decision, actor, written)
        except _AlreadyStarted:
            return await self._duplicate(definition.name, request.key, input, actor)
        if not_started is not None:
            await self._after_commit(written)
            return not_started
        await self._after_commit(written)
        return StartOutcome(decision.state.saga_id, created=True, status=decision.state.status)

    async def starts(
        self,
        requests: Sequence[tuple[StartSaga, Mapping[str, str] | None]],
        actor: str = "broker",
    ) -> list[StartOutcome]:
        """`start` for many (request, trace) at once: their sagas start in one transaction
        (group commit), with the outcome of each in order. A start that needs semantic locks,
        or a child's that cannot start, goes through `start` after it. Raises as `start` does
        for the first start that cannot be made (nothing of the batch is then started)."""
        valid: dict[int, tuple[Saga, dict[str, Any]]] = {}
        one_by_one: list[int] = []
        for n, (request, _trace) in enumerate(requests):
            try:
                definition, input, resources = self._validate(request)
            except (UnknownSaga, InvalidInput):
                if request.parent is None:
                    raise
                one_by_one.append(n)  # its parent is told: see start()
                continue
            if resources:
                one_by_one.append(n)
            else:
                valid[n] = (definition, input)
        outcomes = await self._start_unlocked(
            {n: (*requests[n], definition, input) for n, (definition, input) in valid.items()},
            actor,
        )
        for n in one_by_one:
            request, trace = requests[n]
            outcomes[n] = await self.start(request, actor, trace=trace)
        return [outcomes[n] for n in range(len(requests))]

    async def _start_unlocked(
        self,
        starts: Mapping[int, tuple[StartSaga, Mapping[str, str] | None, Saga, dict[str, Any]]],
        actor: str,
    ) -> dict[int, StartOutcome]:
        """Start sagas that need no semantic lock, validated already, in one transaction;
        the outcome of each by its number in `starts`."""
        if not starts:
            return {}
        now = self.clock()
        written = _Written()
        decisions: dict[int, Decision] = {}
        async with self.store.transaction() as tx:
            held = await tx.take_held_cancels(
                [(definition.name, request.key) for request, _, definition, _ in starts.values()]
            )
            for n, (request, trace, definition, input) in starts.items():
                decisions[n] = machine.start(
                    definition,
                    saga_id=self.new_id(),
                    key=request.key,
                    input=input,
                    now=now,
                    cancel_reason=held.get((definition.name, request.key)),
                    parent=request.parent,
                    trace=trace,
                )
            inserted = await tx.insert_all([d.state for d in decisions.values()])
            await self._write_all(
                tx,
                [
                    _Change(d, actor, None)
                    for d in decisions.values()
                    if d.state.saga_id in inserted
                ],
                written,
            )
        outcomes: dict[int, StartOutcome] = {}
        for n, decision in decisions.items():
            state = decision.state
            if state.saga_id in inserted:
                outcomes[n] = StartOutcome(state.saga_id, created=True, status=state.status)
        await self._after_commit(written)  # the new sagas' commands first, then the lookups
        for n, decision in decisions.items():
            if n not in outcomes:
                state = decision.state
                outcomes[n] = await self._duplicate(state.name, state.key, state.input, actor)
        return outcomes

    def _validate(self, request: StartSaga) -> tuple[Saga, dict[str, Any], tuple[str, ...]]:
        """The definition a start names, its input as validated, and the resources it locks;
        raises UnknownSaga or InvalidInput saying what is wrong."""
        definition, input = self.registry.validate_start(
            request.saga, request.version, request.input
        )
        return definition, input, locks.resources(definition.name, definition.locks, input)

    async def _duplicate(
        self, saga: str, key: str, input: Mapping[str, Any], actor: str
    ) -> StartOutcome:
        """What a start whose key has a saga already comes to: that saga. A start with other
        input than that saga's (validated `input`) is flagged, as the key was most likely
        reused by mistake: see `_flag_reused_key`."""
        existing = await self.store.find(SagaQuery(saga=saga, key=key, limit=1))
        if not existing:  # pragma: no cover - the conflicting row vanished: retention ran
            raise ConcurrentUpdate(f"saga {saga!r} key {key!r} vanished while starting; retry")
        found = existing[0]
        saga_id = str(found.saga_id)
        log.info("saga_start_duplicate", saga_id=saga_id, key=key)
        self._notify([("saga_start_duplicate", {"saga": saga, "key": key, "saga_id": saga_id})])
        differs = found.input != input
        if differs:
            await self._flag_reused_key(found, input, actor)
        return StartOutcome(
            found.saga_id, created=False, status=found.status, input_differs=differs
        )

    async def _flag_reused_key(self, saga: SagaState, input: Mapping[str, Any], actor: str) -> None:
        """A start with other input than its key's saga started nothing: a warning, and a
        `start_repeated` entry in that saga's history naming the top-level input fields that
        differ (not their values: the input may hold what must not be logged)."""
        fields = sorted(
            k for k in {*saga.input, *input} if saga.input.get(k, _ABSENT) != input.get(k, _ABSENT)
        )
        detail = {"same_input": False, "differing_fields": fields}
        async with self.store.transaction() as tx:
            if await tx.lock(saga.saga_id) is None:  # pragma: no cover - retention ran
                return
            await tx.append_history(
                saga.saga_id, [HistoryEntry("start_repeated", None, detail)], actor
            )
        about = {"saga": saga.name, "saga_id": str(saga.saga_id), "key": saga.key}
        log.warning("start_key_reused_with_other_input", **about, differing_fields=fields)
        self._notify([("start_repeated", {**detail, **about})])

    async def cancel(
        self, request: CancelSaga, actor: str = "broker", *, hold: bool = True
    ) -> CancelOutcome:
        """Cancel the sagas `request` names. A key that no saga, nor a start waiting for its
        semantic locks, has yet: with `hold`, the cancel is held and applies to the start
        when it comes (a message may overtake its start); without (an operator, for whom
        such a key is most likely a typo), SagaNotFound and nothing is held."""
        now = self.clock()
        written = _Written()
        results: list[tuple[UUID, SagaStatus]] = []
        refused: str | None = None
        async with self.store.transaction() as tx:
            if request.saga_id is not None:
                found = await tx.lock(request.saga_id)
                if found is None:
                    raise SagaNotFound(f"no saga with id {request.saga_id}")
                states = [found]
            else:
                assert request.key is not None
                states = await tx.lock_by_key(request.key, request.saga)
                if not states:
                    # A start waiting for its semantic locks ends cancelled at once, without
                    # running a step; its place in the queue goes to whoever waits behind it.
                    waiting = await tx.remove_lock_waiters(request.key, request.saga)
                    if not waiting:
                        if not hold:
                            where = "" if request.saga is None else f" for saga {request.saga!r}"
                            raise SagaNotFound(
                                f"no saga has key {request.key!r}{where}, and no start with it "
                                "waits for a semantic lock: nothing to cancel"
                            )
                        await tx.hold_cancel(request.key, request.saga, request.reason)
                        log.info("saga_cancel_held", key=request.key, saga=request.saga)
                        return CancelOutcome(sagas=(), held=True)
                    for waiter in waiting:
                        ended = await self._start_waiter(tx, waiter, actor, written, request.reason)
                        if ended is not None:
                            results.append((ended.saga_id, ended.status))
                    await self._grant(
                        tx, sorted({r for w in waiting for r in w.resources}), written
                    )
            for state in states:
                definition = self.registry.get(state.name, state.version)
                event: machine.Event = (
                    CancelRequested(request.reason)
                    if request.parent is None
                    else machine.UndoRequested(request.reason, request.parent)
                )
                decision = machine.decide(definition, state, event, now)
                await self._write(tx, decision, actor, written, before=state)
                results.append((state.saga_id, decision.state.status))
                refused = refused or next(
                    (
                        str((h.detail or {}).get("why"))
                        for h in decision.history
                        if h.event == "cancel_refused"
                    ),
                    None,
                )
        await self._after_commit(written)
        return CancelOutcome(sagas=tuple(results), refused=refused)

    async def operate(self, saga_id: UUID, action: OperatorEvent, actor: str) -> SagaState:
        """An operator's action (pause, resume, retry, skip, mark-compensated) on one saga,
        recorded in its history with `actor` and the action's reason. Raises SagaNotFound,
        or OperationRefused saying why the action does not apply now."""
        if not action.reason.strip():
            why = "say why: operator actions are recorded with a reason"
            await self._record_refusal(saga_id, action, actor, why)
            raise OperationRefused(why)
        now = self.clock()
        written = _Written()
        async with self.store.transaction() as tx:
            state = await tx.lock(saga_id)
            if state is None:
                raise SagaNotFound(f"no saga with id {saga_id}")
            definition = self.registry.get(state.name, state.version)
            decision = machine.decide(definition, state, action, now)
            if decision.refused is None:
                saved = await self._write(tx, decision, actor, written, before=state)
        if decision.refused is not None:
            await self._record_refusal(saga_id, action, actor, decision.refused)
            raise OperationRefused(decision.refused)
        await self._after_commit(written)
        return saved

    async def _record_refusal(
        self, saga_id: UUID, action: OperatorEvent, actor: str, why: str
    ) -> None:
        """Record a refused operator action in the saga's history, in a transaction of its
        own (the refused one wrote nothing): the audit trail shows who tried what, and why
        it was refused. Nothing to record when there is no such saga."""
        step = action.step if isinstance(action, SkipRequested) else None
        detail = {"action": ACTION_NAMES[type(action)], "reason": action.reason, "why": why}
        if step is not None:
            detail["step"] = step
        written = _Written()
        async with self.store.transaction() as tx:
            state = await tx.lock(saga_id)
            if state is None:
                return
            await tx.append_history(
                saga_id, [HistoryEntry("operator_action_refused", step, detail)], actor
            )
            written.observed.append(
                (
                    "operator_action_refused",
                    {**detail, "actor": actor, "saga": state.name, "saga_id": str(saga_id)},
                )
            )
        await self._after_commit(written)

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
        written = _Written()
        known = [False] * len(replies)
        async with self.store.transaction() as tx:
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
                states = await tx.lock_all(list(round_))
                changes: list[_Change] = []
                for state in states:
                    n, r = round_[state.saga_id]
                    known[n] = True
                    definition = self.registry.get(state.name, state.version)
                    decision = machine.decide(definition, state, ReplyReceived(r), now)
                    changes.append(_Change(decision, "engine", state))
                await self._write_all(tx, changes, written)
                pending = later
        for r, found in zip(replies, known, strict=True):
            if not found:
                # No saga row, so no history to record it in (the saga never existed here, or
                # retention removed it): this log line and the counter are its only trace.
                detail = {
                    "reason": "unknown saga",
                    "saga_id": str(r.saga_id),
                    "step": r.step,
                    "command_id": str(r.command_id),
                    "outcome": r.outcome,
                }
                log.warning("reply_ignored", **detail)
                self._notify([("reply_ignored", detail)])
        await self._after_commit(written)
        return known

    async def fire_timers(self, limit: int = 100) -> int:
        """Handle sagas whose timeout or retry time has come; returns how many."""
        now = self.clock()
        due = TimersDue(self.unconsumed())
        written = _Written()
        async with self.store.transaction() as tx:
            states = await tx.claim_due(now, limit)
            changes = [
                _Change(
                    machine.decide(self.registry.get(state.name, state.version), state, due, now),
                    "engine",
                    state,
                )
                for state in states
            ]
            await self._write_all(tx, changes, written)
        await self._after_commit(written)
        return len(states)

    async def sweep_locks(self, limit: int = 100) -> int:
        """Reject the waiting starts whose `lock_wait` has run out, and start the waiting
        ones whose resources are free; returns how many waiters it handled. Starting them is
        a backstop: the transaction that frees a resource starts its waiters itself, but
        leaves one another transaction is busy with (or one an expiry unblocked) to this."""
        now = self.clock()
        written = _Written()
        async with self.store.transaction() as tx:
            expired = await tx.expire_lock_waiters(now, limit)
            for waiter in expired:
                await self._reject(
                    tx,
                    waiter.saga,
                    waiter.key,
                    waiter.expired_error(now),
                    parent=waiter.parent,
                    event="lock_wait_expired",
                    written=written,
                )
            granted = await self._grant(tx, None, written, limit)
        await self._after_commit(written)
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
        ids, self._published = self._published, []
        if not ids:
            return
        try:
            async with self.store.transaction() as tx:
                await tx.delete_outbox(ids)
        except BaseException:
            self._published = ids + self._published
            raise

    # -- shell ----------------------------------------------------------------------------

    async def _write(
        self,
        tx: SagaTransaction,
        decision: Decision,
        actor: str,
        written: _Written,
        before: SagaState | None = None,
    ) -> SagaState:
        return (await self._write_all(tx, [_Change(decision, actor, before)], written))[0]

    async def _write_all(
        self, tx: SagaTransaction, changes: Sequence[_Change], written: _Written
    ) -> list[SagaState]:
        """Persist decisions (of distinct sagas) inside `tx`, all in one `save_batch` (one
        statement in Postgres), and return the states as saved; what to publish and report
        after commit goes into `written`. `before` is None for a saga inserted in `tx` already."""
        saved: list[SagaState] = []
        moved: list[tuple[SagaState, SagaState]] = []
        unchanged: set[int] = set()
        for n, change in enumerate(changes):
            state, before = change.decision.state, change.before
            # Both: a decision that only records history (an ignored reply) leaves the state
            # equal to `before` when the clock has not moved since the last transition.
            if before is not None and state == before and not change.decision.changed:
                unchanged.add(n)
                state = before
            elif before is not None:
                state = replace(state, revision=before.revision + 1)
                moved.append((before, state))
            saved.append(state)
        appends: list[tuple[UUID, Sequence[HistoryEntry], str]] = []
        messages: list[OutboxMessage] = []
        freed_all: list[str] = []
        for n, (change, state) in enumerate(zip(changes, saved, strict=True)):
            if n in unchanged:
                continue
            before, decision = change.before, change.decision
            history = list(decision.history)
            if self._gives_back_locks(before, state):
                freed = await tx.release_locks(state.saga_id)
                if freed:
                    freed_all += freed
                    history.append(
                        HistoryEntry("locks_released", detail={"resources": list(freed)})
                    )
            if history:
                appends.append((state.saga_id, history, change.actor))
            messages += _outbox_messages(decision, state)
            for entry in history:
                written.observed.append(
                    (
                        entry.event,
                        {
                            **(entry.detail or {}),
                            "saga": state.name,
                            "saga_id": str(state.saga_id),
                            "step": entry.step,
                            # The one log line of a start names its key too.
                            **({"key": state.key} if entry.event == "saga_started" else {}),
                            # Log lines of a timer's transition too name the saga's trace.
                            **trace_log_fields(state.trace),
                        },
                    )
                )
        # One call for the whole batch: the Postgres store makes it one statement.
        written.outbox += await tx.save_batch(moved, appends, messages)
        if freed_all:
            await self._grant(tx, sorted(set(freed_all)), written)
        return saved

    # -- semantic locks (orchestrator/locks.py) -------------------------------------------

    async def _take_locks(
        self,
        tx: SagaTransaction,
        definition: Saga,
        state: SagaState,
        resources: Sequence[str],
        written: _Written,
    ) -> StartOutcome | None:
        """Take a new saga's resources (None: taken, it may start); when one is held, apply
        the definition's `on_locked` policy and return what the start came to."""
        if await tx.lock_by_key(state.key, state.name):
            # The key's own saga may hold these very resources: this start is a duplicate.
            raise _AlreadyStarted
        conflict = await tx.acquire_locks(
            resources, saga_id=state.saga_id, saga=state.name, key=state.key, now=state.created_at
        )
        if conflict is None:
            return None
        if definition.on_locked == "reject":
            await self._reject(
                tx,
                state.name,
                state.key,
                conflict.error(),
                parent=state.parent,
                event="saga_start_rejected",
                written=written,
            )
            return StartOutcome(None, created=False, status=None, rejected=conflict.describe())
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
        event = "saga_start_queued"
        if not await tx.enqueue_lock_waiter(waiter):
            event = "saga_start_duplicate"  # this key waits already: nothing more to do
        held_by = None if conflict.held_by is None else str(conflict.held_by)
        fields = {"saga": state.name, "key": state.key, "resource": conflict.resource}
        written.observed.append((event, {**fields, "held_by": held_by, "queued": True}))
        return StartOutcome(None, created=False, status=None, queued=True)

    async def _refuse_child(self, request: StartSaga, exc: UnknownSaga | InvalidInput) -> None:
        written = _Written()
        async with self.store.transaction() as tx:
            await self._reject(
                tx,
                request.saga,
                request.key,
                start_error(exc),
                parent=request.parent,
                event="saga_start_rejected",
                written=written,
            )
        await self._after_commit(written)

    async def reject_start(
        self, saga: str | None, key: str | None, error: dict[str, Any], *, message_id: str
    ) -> None:
        """Announce a start its caller dead-letters (an unknown saga, invalid input, a body
        that is no valid start: `error` says which and why) as a `<saga>.rejected` outcome
        event, through the outbox as a lock's rejection is: a sender in any language hears
        why nothing started. `saga` None (no valid saga name in the body) makes it
        `saga.rejected`; `key` None, a start without a usable key. `message_id`: the
        event's, the same when the same start is judged again (a redelivery)."""
        written = _Written()
        async with self.store.transaction() as tx:
            await self._reject(
                tx,
                saga,
                key,
                error,
                parent=None,
                event="saga_start_invalid",
                written=written,
                message_id=message_id,
            )
        await self._after_commit(written)

    async def _reject(
        self,
        tx: SagaTransaction,
        saga: str | None,
        key: str | None,
        error: dict[str, Any],
        *,
        parent: ParentRef | None,
        event: str,
        written: _Written,
        message_id: str | None = None,
    ) -> None:
        """Tell the starter through a `<saga>.rejected` outcome event: there is no saga, so
        no history either; the event, the log line and the observer are the trace. A child
        saga's parent step is answered with a failure, so it moves on instead of waiting for
        its timeout."""
        outcome = OutcomeEvent(saga_id=None, saga=saga, key=key, status="rejected", error=error)
        messages = [
            OutboxMessage(
                exchange=Exchange.EVENTS,
                routing_key=outcome.routing_key,
                body=outcome.model_dump_json().encode(),
                message_id=message_id or f"{saga}:{key}:rejected:{self.new_id()}",
            )
        ]
        if parent is not None:
            answer = Reply(
                command_id=parent.command_id,
                saga_id=parent.saga_id,
                step=parent.step,
                outcome="failure",
                error=ReplyError(type=error["type"], message=error["message"], retryable=False),
            )
            messages.append(
                OutboxMessage(
                    exchange=Exchange.DEFAULT,
                    routing_key=REPLY_QUEUE,
                    body=answer.model_dump_json().encode(),
                    message_id=f"{parent.command_id}:rejected",
                )
            )
        written.outbox += await tx.add_outbox(messages)
        detail = {"saga": saga, "key": key, **{k: v for k, v in error.items() if k != "type"}}
        written.observed.append((event, detail))

    def _gives_back_locks(self, before: SagaState | None, state: SagaState) -> bool:
        return (
            state.status in _GIVES_BACK_LOCKS
            and (before is None or before.status != state.status)
            and bool(self.registry.get(state.name, state.version).locks)
        )

    async def _grant(
        self,
        tx: SagaTransaction,
        freed: Sequence[str] | None,
        written: _Written,
        limit: int = _GRANT_BATCH,
    ) -> int:
        """Start, in `tx`, the waiting starts whose resources are free now (of `freed`, or
        any); returns how many."""
        sagas = {(s.name, s.version) for s in self.registry.all() if s.locks}
        if not sagas:
            return 0
        now = self.clock()
        claimed = await tx.claim_lock_waiters(now, freed=freed, sagas=sagas, limit=limit)
        for waiter in claimed:
            cancel_reason = await tx.take_held_cancel(waiter.saga, waiter.key)
            await self._start_waiter(tx, waiter, "engine", written, cancel_reason)
        return len(claimed)

    async def _start_waiter(
        self,
        tx: SagaTransaction,
        waiter: LockWaiter,
        actor: str,
        written: _Written,
        cancel_reason: str | None,
    ) -> SagaState | None:
        """Start a saga that waited for its resources, taken off the queue in `tx` (or end
        it cancelled at once, with `cancel_reason`). None when its key has a saga already: a
        start of the same key with other input found its own resources free meanwhile."""
        definition = self.registry.get(waiter.saga, waiter.version)
        now = self.clock()
        if await tx.lock_by_key(waiter.key, waiter.saga):
            written.observed.append(
                ("saga_start_duplicate", {"saga": waiter.saga, "key": waiter.key, "queued": True})
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
            conflict = await tx.acquire_locks(
                waiter.resources,
                saga_id=state.saga_id,
                saga=state.name,
                key=state.key,
                now=now,
                waited_as=waiter.id,
            )
            if conflict is not None:  # the claim saw them free: only a lost race gets here
                raise ConcurrentUpdate(f"{conflict.describe()} after all; retry")
            decision = _holding(decision, waiter.resources, queued_at=waiter.enqueued_at)
        if not await tx.insert(decision.state):
            raise ConcurrentUpdate(f"saga {waiter.saga!r} key {waiter.key!r} started meanwhile")
        return await self._write(tx, decision, actor, written)

    async def _after_commit(self, written: _Written) -> None:
        # Logged only now: a transaction rolled back (a lost race, a crash) and decided again
        # must not leave log lines for transitions that never happened.
        for event, detail in written.observed:
            log.info(event, **_log_detail(detail))
        self._notify(written.observed)
        await self._publish_after_commit(written.outbox)

    def _notify(self, observed: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        for event, detail in observed:
            try:
                self.observe(event, detail)
            except Exception:
                # The transition has committed: a broken observer must not make the caller
                # redeliver (and so re-count) a message whose effect is already stored.
                log.exception("observer_failed", observed_event=event)

    async def _publish_after_commit(self, outbox: Sequence[OutboxMessage]) -> None:
        if not outbox:
            return
        self.faults("after_commit_before_publish")
        try:
            # Straight to the broker: no transaction on the path from one step to the next.
            # The rows are deleted later, in bulk, by the next relay sweep of this replica
            # (`relay` flushes `_published` first); a crash before then leaves them for a
            # relay to send again, which receivers absorb (they dedup by id).
            await self.publisher.publish(outbox)
        except Exception as exc:  # the relay republishes; the transition itself is safe
            log.warning("outbox_publish_deferred", count=len(outbox), error=str(exc))
            return
        self.faults("after_publish_before_outbox_delete")
        self._published += [m.id for m in outbox if m.id is not None]


def _outbox_messages(decision: Decision, state: SagaState) -> list[OutboxMessage]:
    """What a decision sends, as outbox rows: commands, outcome events, a child saga's start
    or cancel, a child's answer to its parent. All through the outbox, so they leave only if
    the transition commits; every one carries the trace context the saga started with."""
    headers = state.trace or None
    return (
        [
            OutboxMessage(
                exchange=Exchange.COMMANDS,
                routing_key=c.command,
                body=c.model_dump_json().encode(),
                message_id=str(c.command_id),
                reply_to=REPLY_QUEUE,
                headers=headers,
            )
            for c in decision.commands
        ]
        + [
            OutboxMessage(
                exchange=Exchange.EVENTS,
                routing_key=e.routing_key,
                body=e.model_dump_json().encode(),
                message_id=f"{e.saga_id}:{e.status}:{state.revision}",
                headers=headers,
            )
            for e in decision.events
        ]
        + [
            OutboxMessage(
                exchange=Exchange.SAGAS,
                routing_key=routing_key,
                body=body.model_dump_json().encode(),
                message_id=f"{state.saga_id}:{state.revision}:{routing_key}:{n}",
                headers=headers,
            )
            for n, (routing_key, body) in enumerate(decision.requests)
        ]
        + [
            OutboxMessage(
                exchange=Exchange.DEFAULT,
                routing_key=REPLY_QUEUE,
                body=r.model_dump_json().encode(),
                message_id=f"{r.command_id}:{state.revision}",
                headers=headers,
            )
            for r in decision.replies
        ]
    )


def start_error(exc: UnknownSaga | InvalidInput) -> dict[str, Any]:
    """The `error` of the `<saga>.rejected` event for a start that cannot be made."""
    kind = "invalid_input" if isinstance(exc, InvalidInput) else "unknown_saga"
    return {"type": kind, "message": str(exc)}


def _holding(
    decision: Decision, resources: Sequence[str], queued_at: datetime | None = None
) -> Decision:
    """The decision with its saga's semantic locks first in its history."""
    detail: dict[str, Any] = {"resources": list(resources)}
    if queued_at is not None:
        detail["queued_at"] = queued_at.isoformat()
    entry = HistoryEntry("locks_acquired", detail=detail)
    return replace(decision, history=(entry, *decision.history))


def _log_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Observed detail as log fields; `attempt` etc. become filterable fields of their own.
    `event` is structlog's own: the line's name."""
    return {k: v for k, v in detail.items() if k != "event"}
