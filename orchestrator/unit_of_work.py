"""The unit of work: one store transaction, what it writes, and what is done once it has
committed. Every use case of the engine runs in one:

    async with units() as uow:
        state = await uow.tx.lock(saga_id)
        await uow.write(decision, actor, before=state)

On a clean exit of the block the transaction commits; then the history written is logged and
told to the observer, and the outbox rows are published straight to the broker. An exception
rolls the transaction back and nothing is logged, told or published: a transition rolled
back (a lost race, a crash) and decided again leaves no trace of the one that never happened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol
from uuid import UUID

import structlog

from orchestrator.event_names import HistoryEvent
from orchestrator.machine import Decision, HistoryEntry
from orchestrator.messages import OutboxMessage
from orchestrator.outbox import decision_messages
from orchestrator.ports import Publisher, SagaStore, SagaTransaction
from orchestrator.search_fields import SearchValue
from orchestrator.state import SagaState
from orchestrator.trace import log_fields as trace_log_fields
from orchestrator.trace import saga_trace_id

log = structlog.get_logger(__name__)

Observer = Callable[[HistoryEvent, Mapping[str, Any]], None]
"""Told `(event, detail)` for every history entry once its transaction has committed, and for
what leaves no history: `reply_ignored` with reason `unknown saga` (there is no saga row to
record it in), `saga_start_duplicate`, `saga_start_invalid` (a start announced as rejected
before its caller dead-letters it), and the starts a semantic lock kept from starting:
`saga_start_rejected`, `saga_start_queued`, `lock_wait_expired`. Adapters count these
(adapters/metrics.py), so the core needs no metrics library; it must not raise, and must not
block."""

Observed = list[tuple[HistoryEvent, dict[str, Any]]]


@dataclass(frozen=True)
class Committed:
    """One saga's transition, committed: the state it was decided on (None: the saga was
    just started), the state saved, and the history recorded."""

    before: SagaState | None
    after: SagaState
    history: tuple[HistoryEntry, ...]


Spans = Callable[[Sequence[Committed]], None]
"""Told the transitions of each unit of work once it has committed, to make the spans of
what ended in them (adapters/tracing). With it, every message a saga sends names one of the
saga's spans as its parent (orchestrator/outbox.py). Like the observer, it must not raise and
must not block. None (the default): no spans, and no work for them per transition."""


@dataclass(frozen=True)
class Change:
    """A decision to persist, by whom, and the state it was decided on (None: just inserted)."""

    decision: Decision
    actor: str
    before: SagaState | None


class LockRelease(Protocol):
    """How a transition that finishes a saga gives its semantic locks back
    (orchestrator/semantic_locks.py)."""

    async def release(
        self, tx: SagaTransaction, before: SagaState | None, state: SagaState
    ) -> tuple[str, ...]:
        """The resources the saga gives back in `tx` by moving from `before` to `state`."""

    async def grant(self, uow: UnitOfWork, freed: Sequence[str]) -> int:
        """Start, in `uow`, the waiting starts whose resources (of `freed`) are free now."""


class UnitsOfWork:
    """Opens the engine's units of work on its store, and does what one has written once it
    has committed: logs it, tells the observer, publishes its outbox rows."""

    def __init__(
        self,
        store: SagaStore,
        publisher: Publisher,
        locks: LockRelease,
        *,
        observe: Observer,
        spans: Spans | None = None,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.locks = locks
        self.observe = observe
        self.spans = spans
        # Outbox rows published after their commit, deleted in bulk by `forget_published`.
        self._published: list[int] = []

    def __call__(self) -> UnitOfWork:
        return UnitOfWork(self)

    def notify(self, observed: Sequence[tuple[HistoryEvent, Mapping[str, Any]]]) -> None:
        for event, detail in observed:
            try:
                self.observe(event, detail)
            except Exception:
                # The transition has committed: a broken observer must not make the caller
                # redeliver (and so re-count) a message whose effect is already stored.
                log.exception("observer_failed", observed_event=event)

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

    async def after_commit(self, uow: UnitOfWork) -> None:
        for event, detail in uow.warned:
            log.warning(event, **detail)
            self.notify([(event, detail)])
        for event, detail in uow.observed:
            log.info(event, **_log_detail(detail))
        self.notify(uow.observed)
        if self.spans is not None and uow.committed:
            try:
                self.spans(uow.committed)
            except Exception:  # committed: spans are not worth a redelivery
                log.exception("spans_failed")
        await self._publish(uow.outbox)

    async def _publish(self, outbox: Sequence[OutboxMessage]) -> None:
        if not outbox:
            return
        try:
            # Straight to the broker: no transaction on the path from one step to the next.
            # The rows are deleted later, in bulk, by the next relay sweep of this replica
            # (`Engine.relay` calls `forget_published` first); a crash before then leaves them
            # for a relay to send again, which receivers absorb (they dedup by id).
            await self.publisher.publish(outbox)
        except Exception as exc:  # the relay republishes; the transition itself is safe
            log.warning("outbox_publish_deferred", count=len(outbox), error=str(exc))
            return
        self._published += [m.id for m in outbox if m.id is not None]


class UnitOfWork:
    """One transaction (`tx`) and what it wrote that must be acted on only once it has
    committed: a rolled-back (and retried) transition must neither publish nor be counted."""

    def __init__(self, units: UnitsOfWork) -> None:
        self._units = units
        self._transaction: AbstractAsyncContextManager[SagaTransaction] | None = None
        self.tx: SagaTransaction
        self.outbox: list[OutboxMessage] = []
        # Logged (info) and told to the observer after commit: history, and the events of
        # starts that started nothing (they have no saga to record them in).
        self.observed: Observed = []
        # Logged as warnings and told to the observer after commit, before `observed`:
        # what has no saga row to record it in.
        self.warned: Observed = []
        # Told to the spans hook after commit (only when there is one).
        self.committed: list[Committed] = []

    async def __aenter__(self) -> UnitOfWork:
        self._transaction = self._units.store.transaction()
        self.tx = await self._transaction.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._transaction is not None
        suppressed = await self._transaction.__aexit__(exc_type, exc, tb)
        if exc_type is None:
            await self._units.after_commit(self)
        return suppressed

    async def send(self, messages: Sequence[OutboxMessage]) -> None:
        """Write messages to the outbox, to publish after commit."""
        self.outbox += await self.tx.add_outbox(messages)

    def observe(self, event: HistoryEvent, detail: dict[str, Any]) -> None:
        """Log `event` and tell the observer, after commit."""
        self.observed.append((event, detail))

    def warn(self, event: HistoryEvent, detail: dict[str, Any]) -> None:
        """Log `event` as a warning and tell the observer, after commit."""
        self.warned.append((event, detail))

    async def write(
        self, decision: Decision, actor: str, before: SagaState | None = None
    ) -> SagaState:
        return (await self.write_all([Change(decision, actor, before)]))[0]

    async def write_all(self, changes: Sequence[Change]) -> list[SagaState]:
        """Persist decisions (of distinct sagas), all in one `save_batch` (one statement in
        Postgres), and return the states as saved; what they send and record is published
        and reported after commit. A saga that finishes gives its semantic locks back, and
        the starts that waited for them start in this same transaction."""
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
        search: list[tuple[UUID, SearchValue]] = []
        freed_all: list[str] = []
        spans = self._units.spans is not None
        for n, (change, state) in enumerate(zip(changes, saved, strict=True)):
            if n in unchanged:
                continue
            history = list(change.decision.history)
            freed = await self._units.locks.release(self.tx, change.before, state)
            if freed:
                freed_all += freed
                history.append(
                    HistoryEntry(HistoryEvent.LOCKS_RELEASED, detail={"resources": list(freed)})
                )
            if history:
                appends.append((state.saga_id, history, change.actor))
            messages += decision_messages(change.decision, state, name_spans=spans)
            search += [(state.saga_id, value) for value in change.decision.search]
            self.observed += [_observed(entry, state, spans) for entry in history]
            if spans:
                self.committed.append(Committed(change.before, state, tuple(history)))
        # One call for the whole batch: the Postgres store makes it one statement.
        self.outbox += await self.tx.save_batch(moved, appends, messages, search)
        if freed_all:
            await self._units.locks.grant(self, sorted(set(freed_all)))
        return saved


def _observed(
    entry: HistoryEntry, state: SagaState, spans: bool
) -> tuple[HistoryEvent, dict[str, Any]]:
    # With spans, a saga started without trace context has a trace of its own: name it.
    traced = {"trace_id": saga_trace_id(state.trace, state.saga_id)} if spans else None
    return (
        entry.event,
        {
            **(entry.detail or {}),
            "saga": state.name,
            "saga_id": str(state.saga_id),
            "step": entry.step,
            # The one log line of a start names its key too.
            **({"key": state.key} if entry.event == HistoryEvent.SAGA_STARTED else {}),
            # Log lines of a timer's transition too name the saga's trace.
            **(traced or trace_log_fields(state.trace)),
        },
    )


def _log_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """Observed detail as log fields; `attempt` etc. become filterable fields of their own.
    `event` is structlog's own: the line's name."""
    return {k: v for k, v in detail.items() if k != "event"}
