"""Bulk operator actions: one action (retry, skip, mark-compensated, pause, resume, cancel)
on every saga a filter (a `SagaQuery`) matches.

The sagas are listed first, up to a limit, each with the status and revision it had; then
they are acted on in batches, one transaction each, every saga of a batch locked for it. A
saga whose status or revision moved since it was listed is refused, not forced: the
operator chose it as it was. Every saga's action, or its refusal, is recorded in its own
history with the actor and the reason, as for one saga (`Engine.operate`, `Engine.cancel`).
A dry run lists and judges the same way, on the sagas as listed, and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from uuid import UUID

import structlog

from orchestrator import machine
from orchestrator.errors import NoFilter, OperationRefused, UnknownSaga
from orchestrator.event_names import HistoryEvent
from orchestrator.events import (
    ACTION_NAMES,
    CancelRequested,
    Decision,
    HistoryEntry,
    OperatorEvent,
    SkipRequested,
)
from orchestrator.ports import Clock, SagaQuery, SagaStore
from orchestrator.registry import Registry
from orchestrator.state import SagaState, SagaStatus
from orchestrator.unit_of_work import Change, UnitOfWork, UnitsOfWork

log = structlog.get_logger(__name__)

BulkAction = OperatorEvent | CancelRequested

# Sagas per transaction: each batch locks its sagas together, in id order (as group commit
# does, so it cannot deadlock with it), and writes them in one statement.
BATCH = 50
# Sagas per read while listing.
_PAGE = 500
# How many ids of the sagas acted on a report names.
SAMPLE = 10


class Outcome(StrEnum):
    """What became of one saga of a bulk action."""

    APPLIED = "applied"
    CHANGED = "changed"  # its status or revision moved since it was listed
    NOT_APPLICABLE = "not_applicable"  # the action does not apply to the saga as it stands
    GONE = "gone"  # deleted (retention) since it was listed
    NOT_LOADED = "not_loaded"  # this process does not load the saga's version


@dataclass(frozen=True)
class Refusal:
    saga_id: UUID
    saga: str
    key: str
    outcome: Outcome
    why: str


@dataclass(frozen=True)
class BulkReport:
    """`matched`: the sagas listed (at most the limit); `more`: others matched beyond it.
    `counts`: every outcome, 0 included, summing to `matched` (in a dry run, what would
    become of each). `sample`: the first ids acted on (or that would be)."""

    action: str
    dry_run: bool
    matched: int
    more: bool
    counts: dict[Outcome, int]
    refusals: tuple[Refusal, ...]
    sample: tuple[UUID, ...]


@dataclass(frozen=True)
class _Listed:
    """A saga as it was when listed: what it must still be when its turn comes."""

    saga_id: UUID
    saga: str
    key: str
    status: SagaStatus
    revision: int


def action_name(action: BulkAction) -> str:
    return "cancel" if isinstance(action, CancelRequested) else ACTION_NAMES[type(action)]


async def record_refusal(
    uow: UnitOfWork, state: SagaState, action: BulkAction, actor: str, why: str
) -> None:
    """Record in the saga's history (locked in `uow`) that `actor` tried `action` and why it
    was refused: the audit trail holds every attempt."""
    step = action.step if isinstance(action, SkipRequested) else None
    detail = {"action": action_name(action), "reason": action.reason, "why": why}
    if step is not None:
        detail["step"] = step
    entry = HistoryEntry(HistoryEvent.OPERATOR_ACTION_REFUSED, step, detail)
    await uow.tx.append_history(state.saga_id, [entry], actor)
    uow.observe(
        entry.event, {**detail, "actor": actor, "saga": state.name, "saga_id": str(state.saga_id)}
    )


def filtered(query: SagaQuery) -> bool:
    """Whether `query` says which sagas: any filter at all (paging aside)."""
    return query != SagaQuery(limit=query.limit, after=query.after)


class BulkActions:
    def __init__(
        self, units: UnitsOfWork, store: SagaStore, registry: Registry, *, clock: Clock
    ) -> None:
        self._units = units
        self._store = store
        self._registry = registry
        self._clock = clock

    async def run(
        self,
        query: SagaQuery,
        action: BulkAction,
        actor: str,
        *,
        limit: int,
        dry_run: bool = False,
    ) -> BulkReport:
        if not filtered(query):
            raise NoFilter(
                "say which sagas: a bulk action needs at least one filter (status, saga, "
                "step, ...); it never acts on every saga"
            )
        if not action.reason.strip():
            raise OperationRefused("say why: operator actions are recorded with a reason")
        states, more = await self._list(query, limit)
        if dry_run:
            now = self._clock()
            judged = [(s.saga_id, self._judge(s, action, now)[1]) for s in states]
        else:
            listed = [_Listed(s.saga_id, s.name, s.key, s.status, s.revision) for s in states]
            judged = []
            for start in range(0, len(listed), BATCH):
                judged += await self._act(listed[start : start + BATCH], action, actor)
        counts = dict.fromkeys(Outcome, 0)
        for _, refusal in judged:
            counts[Outcome.APPLIED if refusal is None else refusal.outcome] += 1
        report = BulkReport(
            action=action_name(action),
            dry_run=dry_run,
            matched=len(states),
            more=more,
            counts=counts,
            refusals=tuple(r for _, r in judged if r is not None),
            sample=tuple(saga_id for saga_id, r in judged if r is None)[:SAMPLE],
        )
        log.info(
            "bulk_action_done",
            action=report.action,
            actor=actor,
            dry_run=dry_run,
            matched=report.matched,
            more=more,
            **{o.value: n for o, n in counts.items() if n},
        )
        return report

    async def _list(self, query: SagaQuery, limit: int) -> tuple[list[SagaState], bool]:
        """Up to `limit` sagas the query matches, newest activity first, and whether more
        match. Read page by page (keyset): a saga that changes while it is read moves to the
        front and is not listed twice."""
        found: list[SagaState] = []
        after = None
        while True:
            want = min(_PAGE, limit + 1 - len(found))
            page = await self._store.find(replace(query, limit=want, after=after))
            found += page
            if len(page) < want or len(found) > limit:
                return found[:limit], len(found) > limit
            after = (page[-1].updated_at, page[-1].saga_id)

    async def _act(
        self, batch: Sequence[_Listed], action: BulkAction, actor: str
    ) -> list[tuple[UUID, Refusal | None]]:
        """One transaction: lock the batch's sagas, act on those still as listed, and record
        each refusal in its saga's history. Each saga's id, with its refusal if refused."""
        now = self._clock()
        judged: list[tuple[UUID, Refusal | None]] = []
        async with self._units() as uow:
            locked = {s.saga_id: s for s in await uow.tx.lock_all([b.saga_id for b in batch])}
            changes: list[Change] = []
            for listed in batch:
                state = locked.get(listed.saga_id)
                if state is None:
                    why = "deleted since it was listed (retention): nothing to act on"
                    gone = Refusal(listed.saga_id, listed.saga, listed.key, Outcome.GONE, why)
                    judged.append((listed.saga_id, gone))
                    continue
                decision: Decision | None = None
                refusal: Refusal | None = None
                if (state.status, state.revision) != (listed.status, listed.revision):
                    refusal = _refused(state, Outcome.CHANGED, _moved(listed, state))
                else:
                    decision, refusal = self._judge(state, action, now)
                if decision is not None and (refusal is None or cancel_refused(decision)):
                    # A refused cancel records its own refusal, as one saga's cancel does.
                    changes.append(Change(decision, actor, state))
                elif refusal is not None:
                    await record_refusal(uow, state, action, actor, refusal.why)
                judged.append((state.saga_id, refusal))
            await uow.write_all(changes)
        return judged

    def _judge(
        self, state: SagaState, action: BulkAction, now: datetime
    ) -> tuple[Decision | None, Refusal | None]:
        """The decision `action` comes to on `state`, and the refusal if it does not apply."""
        try:
            definition = self._registry.get(state.name, state.version)
        except UnknownSaga as exc:
            return None, _refused(state, Outcome.NOT_LOADED, str(exc))
        decision = machine.decide(definition, state, action, now)
        why = decision.refused or cancel_refused(decision)
        return decision, None if why is None else _refused(state, Outcome.NOT_APPLICABLE, why)


def _refused(state: SagaState, outcome: Outcome, why: str) -> Refusal:
    return Refusal(state.saga_id, state.name, state.key, outcome, why)


def _moved(listed: _Listed, state: SagaState) -> str:
    status = (
        f"status {listed.status.value} -> {state.status.value}"
        if state.status != listed.status
        else f"still {state.status.value}"
    )
    return (
        f"changed since it was listed ({status}, revision {listed.revision} -> "
        f"{state.revision}): see its history, and act on it again if it still needs it"
    )


def cancel_refused(decision: Decision) -> str | None:
    """Why a cancel was refused, as the decision records it (`cancel_refused`); None when
    it was not."""
    return next(
        (
            str((h.detail or {}).get("why"))
            for h in decision.history
            if h.event == HistoryEvent.CANCEL_REFUSED
        ),
        None,
    )
