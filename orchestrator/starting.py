"""Starting sagas (`Engine.start`, `Engine.starts`): validate, take held cancels and semantic
locks, insert and write the first transition; a start whose key has a saga already comes to
that saga (idempotent), and a child that cannot start fails its parent's step at once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog

from orchestrator import locks, machine
from orchestrator.error_info import ErrorInfo
from orchestrator.errors import ConcurrentUpdate, InvalidInput, UnknownSaga
from orchestrator.event_names import HistoryEvent
from orchestrator.machine import Decision, HistoryEntry
from orchestrator.messages import StartSaga
from orchestrator.ports import Clock, SagaQuery
from orchestrator.registry import Registry
from orchestrator.saga import Saga
from orchestrator.semantic_locks import AlreadyStarted, Kept, SemanticLocks, holding
from orchestrator.state import SagaState, SagaStatus
from orchestrator.unit_of_work import Change, UnitsOfWork

log = structlog.get_logger(__name__)

# An input field one of two inputs lacks: unequal to any value, null included.
_ABSENT = object()
# A start as `start_unlocked` takes it: the request, its trace, its definition and input.
_Valid = tuple[StartSaga, Mapping[str, str] | None, Saga, dict[str, Any]]


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


def start_error(exc: UnknownSaga | InvalidInput) -> ErrorInfo:
    """The `error` of the `<saga>.rejected` event for a start that cannot be made."""
    kind = "invalid_input" if isinstance(exc, InvalidInput) else "unknown_saga"
    return ErrorInfo(type=kind, message=str(exc))


class Starter:
    def __init__(
        self,
        units: UnitsOfWork,
        registry: Registry,
        locks: SemanticLocks,
        *,
        clock: Clock,
        new_id: Callable[[], UUID],
    ) -> None:
        self.units = units
        self.registry = registry
        self.locks = locks
        self.clock = clock
        self.new_id = new_id

    async def start(
        self, request: StartSaga, actor: str, trace: Mapping[str, str] | None
    ) -> StartOutcome:
        """One start; a start that needs semantic locks takes them in its transaction."""
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
        kept: Kept | None = None
        try:
            async with self.units() as uow:
                cancel_reason = await uow.tx.take_held_cancel(definition.name, request.key)
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
                    kept = await self.locks.take(uow, definition, decision.state, resources)
                    decision = holding(decision, resources)
                if kept is None:
                    if not await uow.tx.insert(decision.state):
                        raise AlreadyStarted
                    await uow.write(decision, actor)
        except AlreadyStarted:
            return await self._duplicate(definition.name, request.key, input, actor)
        if kept is not None:
            return StartOutcome(
                None,
                created=False,
                status=None,
                rejected=kept.rejected,
                queued=kept.rejected is None,
            )
        return StartOutcome(decision.state.saga_id, created=True, status=decision.state.status)

    async def start_many(
        self,
        requests: Sequence[tuple[StartSaga, Mapping[str, str] | None]],
        actor: str,
    ) -> list[StartOutcome]:
        """Many starts, those that need no semantic lock in one transaction; a start that
        needs semantic locks, or a child's that cannot start, goes through `start` after it.
        Raises as `start` does for the first start that cannot be made (nothing of the batch
        is then started)."""
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
            outcomes[n] = await self.start(request, actor, trace)
        return [outcomes[n] for n in range(len(requests))]

    async def _start_unlocked(
        self, starts: Mapping[int, _Valid], actor: str
    ) -> dict[int, StartOutcome]:
        """Start sagas that need no semantic lock, validated already, in one transaction;
        the outcome of each by its number in `starts`."""
        if not starts:
            return {}
        now = self.clock()
        decisions: dict[int, Decision] = {}
        async with self.units() as uow:
            held = await uow.tx.take_held_cancels(
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
            inserted = await uow.tx.insert_all([d.state for d in decisions.values()])
            await uow.write_all(
                [Change(d, actor, None) for d in decisions.values() if d.state.saga_id in inserted]
            )
        # Published already: the new sagas' commands first, then the lookups of the others.
        outcomes: dict[int, StartOutcome] = {}
        for n, decision in decisions.items():
            state = decision.state
            if state.saga_id in inserted:
                outcomes[n] = StartOutcome(state.saga_id, created=True, status=state.status)
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
        existing = await self.units.store.find(SagaQuery(saga=saga, key=key, limit=1))
        if not existing:  # pragma: no cover - the conflicting row vanished: retention ran
            raise ConcurrentUpdate(f"saga {saga!r} key {key!r} vanished while starting; retry")
        found = existing[0]
        saga_id = str(found.saga_id)
        event = HistoryEvent.SAGA_START_DUPLICATE
        log.info(event, saga_id=saga_id, key=key)
        self.units.notify([(event, {"saga": saga, "key": key, "saga_id": saga_id})])
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
        async with self.units() as uow:
            if await uow.tx.lock(saga.saga_id) is None:  # pragma: no cover - retention ran
                return
            await uow.tx.append_history(
                saga.saga_id, [HistoryEntry(HistoryEvent.START_REPEATED, None, detail)], actor
            )
        about = {"saga": saga.name, "saga_id": str(saga.saga_id), "key": saga.key}
        log.warning("start_key_reused_with_other_input", **about, differing_fields=fields)
        self.units.notify([(HistoryEvent.START_REPEATED, {**detail, **about})])

    async def _refuse_child(self, request: StartSaga, exc: UnknownSaga | InvalidInput) -> None:
        async with self.units() as uow:
            await self.locks.reject(
                uow,
                request.saga,
                request.key,
                start_error(exc),
                parent=request.parent,
                event=HistoryEvent.SAGA_START_REJECTED,
            )
