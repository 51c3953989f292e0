"""The application service: load state, `decide`, persist state + history + outbox in one
transaction, then publish what was decided. The imperative shell around the pure machine."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any
from uuid import UUID

import structlog
from pydantic import ValidationError

from orchestrator import machine
from orchestrator.errors import InvalidInput, OperationRefused, SagaNotFound
from orchestrator.machine import (
    CancelRequested,
    Decision,
    OperatorEvent,
    ReplyReceived,
    TimersDue,
)
from orchestrator.messages import CancelSaga, Reply, StartSaga
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

log = structlog.get_logger("orchestrator.engine")

Observer = Callable[[str, Mapping[str, Any]], None]
"""Told `(event, detail)` for every history entry once its transaction has committed, and for
what leaves no history: `reply_ignored` with reason `unknown saga` (there is no saga row to
record it in) and `saga_start_duplicate`. Adapters count these (adapters/metrics.py), so the
core needs no metrics library; it must not raise, and must not block."""


def _ignore(_event: str, _detail: Mapping[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class StartOutcome:
    saga_id: UUID
    created: bool
    status: SagaStatus


@dataclass(frozen=True)
class CancelOutcome:
    """`held` when no saga had the key yet: the cancel waits for its start."""

    sagas: tuple[tuple[UUID, SagaStatus], ...]
    held: bool = False
    refused: str | None = None


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
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.registry = registry
        self.clock = clock
        self.faults = faults
        self.new_id = new_id
        self.observe = observe

    # -- inbound --------------------------------------------------------------------------

    async def start(self, request: StartSaga, actor: str = "broker") -> StartOutcome:
        """Start a saga, or return the one that already has this key (idempotent)."""
        definition = self.registry.get(request.saga, request.version)
        try:
            validated = definition.input.model_validate(request.input)
        except ValidationError as exc:
            raise InvalidInput(
                f"input for saga {definition.name!r} is invalid: "
                + "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
                )
            ) from exc
        now = self.clock()
        written = _Written()
        try:
            async with self.store.transaction() as tx:
                cancel_reason = await tx.take_held_cancel(definition.name, request.key)
                decision = machine.start(
                    definition,
                    saga_id=self.new_id(),
                    key=request.key,
                    input=validated.model_dump(mode="json"),
                    now=now,
                    cancel_reason=cancel_reason,
                )
                if not await tx.insert(decision.state):
                    raise _AlreadyStarted
                await self._write(tx, decision, actor, written)
        except _AlreadyStarted:
            existing = await self.store.find(
                SagaQuery(saga=definition.name, key=request.key, limit=1)
            )
            if not existing:  # pragma: no cover - the conflicting row vanished: retention ran
                raise
            saga_id = str(existing[0].saga_id)
            log.info("saga_start_duplicate", saga_id=saga_id, key=request.key)
            duplicate = {"saga": definition.name, "key": request.key, "saga_id": saga_id}
            self._notify([("saga_start_duplicate", duplicate)])
            return StartOutcome(existing[0].saga_id, created=False, status=existing[0].status)
        log.info(
            "saga_started",
            saga_id=str(decision.state.saga_id),
            saga=definition.name,
            key=request.key,
        )
        await self._after_commit(written)
        return StartOutcome(decision.state.saga_id, created=True, status=decision.state.status)

    async def cancel(self, request: CancelSaga, actor: str = "broker") -> CancelOutcome:
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
                    await tx.hold_cancel(request.key, request.saga, request.reason)
                    log.info("saga_cancel_held", key=request.key, saga=request.saga)
                    return CancelOutcome(sagas=(), held=True)
            for state in states:
                definition = self.registry.get(state.name, state.version)
                decision = machine.decide(definition, state, CancelRequested(request.reason), now)
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
            raise OperationRefused("say why: operator actions are recorded with a reason")
        now = self.clock()
        written = _Written()
        async with self.store.transaction() as tx:
            state = await tx.lock(saga_id)
            if state is None:
                raise SagaNotFound(f"no saga with id {saga_id}")
            definition = self.registry.get(state.name, state.version)
            decision = machine.decide(definition, state, action, now)
            if decision.refused is not None:
                log.info(
                    "operator_action_refused",
                    saga_id=str(saga_id),
                    action=type(action).__name__,
                    actor=actor,
                    why=decision.refused,
                )
                raise OperationRefused(decision.refused)
            saved = await self._write(tx, decision, actor, written, before=state)
        await self._after_commit(written)
        return saved

    async def reply(self, reply: Reply) -> bool:
        """Apply a participant's reply; False when it named no known saga.

        Either way the caller acks it: a reply that cannot be applied now never can be.
        """
        now = self.clock()
        written = _Written()
        async with self.store.transaction() as tx:
            state = await tx.lock(reply.saga_id)
            if state is not None:
                definition = self.registry.get(state.name, state.version)
                decision = machine.decide(definition, state, ReplyReceived(reply), now)
                await self._write(tx, decision, "engine", written, before=state)
        if state is None:
            # No saga row, so no history to record it in (the saga never existed here, or
            # retention removed it): this log line and the counter are its only trace.
            detail = {
                "reason": "unknown saga",
                "saga_id": str(reply.saga_id),
                "step": reply.step,
                "command_id": str(reply.command_id),
                "outcome": reply.outcome,
            }
            log.warning("reply_ignored", **detail)
            self._notify([("reply_ignored", detail)])
            return False
        await self._after_commit(written)
        return True

    async def fire_timers(self, limit: int = 100) -> int:
        """Handle sagas whose timeout or retry time has come; returns how many."""
        now = self.clock()
        written = _Written()
        async with self.store.transaction() as tx:
            states = await tx.claim_due(now, limit)
            for state in states:
                definition = self.registry.get(state.name, state.version)
                decision = machine.decide(definition, state, TimersDue(), now)
                await self._write(tx, decision, "engine", written, before=state)
        await self._after_commit(written)
        return len(states)

    async def relay(self, older_than: timedelta = timedelta(seconds=2), limit: int = 500) -> int:
        """Publish what a crash (or a broker outage) left in the outbox."""
        async with self.store.transaction() as tx:
            messages = await tx.claim_outbox(older_than, limit)
            if messages:
                await self.publisher.publish(messages)
                await tx.delete_outbox([m.id for m in messages if m.id is not None])
        if messages:
            log.info("outbox_relayed", count=len(messages))
        return len(messages)

    # -- shell ----------------------------------------------------------------------------

    async def _write(
        self,
        tx: SagaTransaction,
        decision: Decision,
        actor: str,
        written: _Written,
        before: SagaState | None = None,
    ) -> SagaState:
        """Persist one decision inside `tx` and return the state as saved; what to publish
        and report after commit goes into `written`."""
        state = decision.state
        if before is not None:
            # Both: a decision that only records history (an ignored reply) leaves the state
            # equal to `before` when the clock has not moved since the last transition.
            if state == before and not decision.changed:
                return before
            state = replace(state, revision=before.revision + 1)
            await tx.save(before, state)
        if decision.history:
            await tx.append_history(state.saga_id, decision.history, actor)
        messages = [
            OutboxMessage(
                exchange=Exchange.COMMANDS,
                routing_key=c.command,
                body=c.model_dump_json().encode(),
                message_id=str(c.command_id),
                reply_to=REPLY_QUEUE,
            )
            for c in decision.commands
        ] + [
            OutboxMessage(
                exchange=Exchange.EVENTS,
                routing_key=e.routing_key,
                body=e.model_dump_json().encode(),
                message_id=f"{e.saga_id}:{e.status}:{state.revision}",
            )
            for e in decision.events
        ]
        for entry in decision.history:
            log.info(
                entry.event,
                saga_id=str(state.saga_id),
                saga=state.name,
                step=entry.step,
                **_log_detail(entry.detail),
            )
            written.observed.append(
                (
                    entry.event,
                    {
                        **(entry.detail or {}),
                        "saga": state.name,
                        "saga_id": str(state.saga_id),
                        "step": entry.step,
                    },
                )
            )
        if messages:
            written.outbox += await tx.add_outbox(messages)
        return state

    async def _after_commit(self, written: _Written) -> None:
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
            await self.publisher.publish(outbox)
        except Exception as exc:  # the relay republishes; the transition itself is safe
            log.warning("outbox_publish_deferred", count=len(outbox), error=str(exc))
            return
        self.faults("after_publish_before_outbox_delete")
        await self.store.delete_outbox([m.id for m in outbox if m.id is not None])


_BOUND = frozenset({"event", "saga_id", "saga", "step"})


def _log_detail(detail: dict[str, object] | None) -> dict[str, object]:
    """History detail as log fields; `attempt` etc. become filterable fields of their own.
    Keys bound by the caller (saga_id, saga, step) are already on the line."""
    if not detail:
        return {}
    return {k: v for k, v in detail.items() if k not in _BOUND}
