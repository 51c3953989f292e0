"""Bulk operator actions on the in-memory fakes: one action on every saga a filter matches,
in batches, each saga's action (or refusal) in its own history; a saga changed since it was
listed is refused, not forced; a dry run writes nothing; no filter, no action."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable

import pytest

from adapters.memory.publisher import MemoryPublisher
from adapters.memory.store import MemoryStore
from orchestrator.bulk import BATCH, SAMPLE, Outcome
from orchestrator.engine import Engine
from orchestrator.errors import NoFilter, OperationRefused
from orchestrator.machine import (
    CancelRequested,
    PauseRequested,
    RetryRequested,
    SkipRequested,
)
from orchestrator.messages import Reply, ReplyError, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from orchestrator.state import SagaState, SagaStatus
from sagas.order import order_v1
from tests.unit.test_engine import ORDER, Clock

PARKED = SagaQuery(status=SagaStatus.FAILED, step="notify_customer")


class Interleaved(MemoryStore):
    """A store that runs `meanwhile` once, right after the first listing: what another
    operator or a reply does between a bulk action's listing and its turn."""

    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def find(self, query: SagaQuery) -> list[SagaState]:
        found = await super().find(query)
        if self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            await run()
        return found


@pytest.fixture
def store() -> Interleaved:
    return Interleaved(clock=Clock())


@pytest.fixture
def publisher() -> MemoryPublisher:
    return MemoryPublisher()


@pytest.fixture
def engine(store: Interleaved, publisher: MemoryPublisher) -> Engine:
    return Engine(store, publisher, Registry([order_v1]), clock=Clock())


async def answer(engine: Engine, publisher: MemoryPublisher, saga_id: uuid.UUID, ok: bool) -> str:
    """Answer the saga's latest command; a failure for good. Returns the step answered."""
    [command] = [
        c
        for c in (json.loads(m.body) for m in publisher.published if m.exchange == "saga.commands")
        if c["saga_id"] == str(saga_id)
    ][-1:]
    await engine.reply(
        Reply(
            command_id=command["command_id"],
            saga_id=saga_id,
            step=command["step"],
            outcome="success" if ok else "failure",
            error=None if ok else ReplyError(type="down", message="no", retryable=False),
        )
    )
    return str(command["step"])


async def started(engine: Engine, key: str) -> uuid.UUID:
    outcome = await engine.start(StartSaga(saga="order", key=key, input=ORDER))
    assert outcome.saga_id is not None
    return outcome.saga_id


async def parked(engine: Engine, publisher: MemoryPublisher, key: str) -> uuid.UUID:
    """An order saga parked past the pivot: notify_customer failed for good."""
    saga_id = await started(engine, key)
    for _ in range(3):  # reserve_credit, reserve_stock, charge_payment
        await answer(engine, publisher, saga_id, ok=True)
    assert await answer(engine, publisher, saga_id, ok=False) == "notify_customer"
    return saga_id


async def events(engine: Engine, saga_id: uuid.UUID) -> list[tuple[str, str, object]]:
    return [(h.event, h.actor, h.detail) for h in await engine.store.history(saga_id)]


async def test_retry_over_a_filter_applies_to_every_parked_saga_in_its_own_history(
    engine: Engine, publisher: MemoryPublisher
) -> None:
    ids = [await parked(engine, publisher, f"p-{n}") for n in range(BATCH + 5)]
    bystander = await started(engine, "running-1")  # not parked: the filter leaves it out
    sent = len(publisher.published)

    report = await engine.bulk(PARKED, RetryRequested("mail is back"), "operator:ann", limit=1000)

    assert (report.action, report.matched, report.more, report.dry_run) == (
        "retry",
        BATCH + 5,
        False,
        False,
    )
    assert report.counts == {**dict.fromkeys(Outcome, 0), Outcome.APPLIED: BATCH + 5}
    assert report.refusals == ()
    assert len(report.sample) == SAMPLE and set(report.sample) <= set(ids)
    for saga_id in ids:
        state = await engine.store.get(saga_id)
        assert state is not None and state.status == SagaStatus.RUNNING
        assert ("saga_retried", "operator:ann", {"reason": "mail is back"}) in await events(
            engine, saga_id
        )
    resent = [m.routing_key for m in publisher.published[sent:]]
    assert resent == ["notifications.order_confirmed"] * (BATCH + 5)
    assert "saga_retried" not in [e for e, _, _ in await events(engine, bystander)]


async def test_a_saga_changed_since_it_was_listed_is_refused_and_recorded(
    engine: Engine, store: Interleaved, publisher: MemoryPublisher
) -> None:
    first, moved = [await parked(engine, publisher, f"c-{n}") for n in range(2)]

    async def retried_singly() -> None:
        """Retried by someone else, and parked again: failed as when listed, but moved on."""
        await engine.operate(moved, RetryRequested("tried one first"), "operator:bob")
        assert await answer(engine, publisher, moved, ok=False) == "notify_customer"

    store.meanwhile = retried_singly
    report = await engine.bulk(PARKED, RetryRequested("mail is back"), "operator:ann", limit=10)

    assert report.counts[Outcome.APPLIED] == 1 and report.counts[Outcome.CHANGED] == 1
    [refusal] = report.refusals
    assert (refusal.saga_id, refusal.key, refusal.outcome) == (moved, "c-1", Outcome.CHANGED)
    assert refusal.why.startswith("changed since it was listed (still failed, revision 4 -> 6)")
    state = await engine.store.get(moved)
    assert state is not None and state.status == SagaStatus.FAILED  # not forced on
    history = await events(engine, moved)
    assert ("saga_retried", "operator:bob", {"reason": "tried one first"}) in history
    assert history[-1] == (
        "operator_action_refused",
        "operator:ann",
        {"action": "retry", "reason": "mail is back", "why": refusal.why},
    )
    assert report.sample == (first,)


async def test_an_action_that_does_not_apply_is_refused_with_the_machines_reason(
    engine: Engine, publisher: MemoryPublisher
) -> None:
    stuck = await parked(engine, publisher, "r-1")
    running = await started(engine, "r-2")
    report = await engine.bulk(
        SagaQuery(saga="order"), PauseRequested("look first"), "api:ann", limit=10
    )
    assert report.counts[Outcome.APPLIED] == 1 and report.counts[Outcome.NOT_APPLICABLE] == 1
    [refusal] = report.refusals
    assert refusal.saga_id == stuck
    assert refusal.why == "only a running or compensating saga can be paused; it is failed"
    assert (await events(engine, stuck))[-1][0] == "operator_action_refused"
    state = await engine.store.get(running)
    assert state is not None and state.status == SagaStatus.PAUSED


async def test_a_dry_run_says_what_would_happen_and_writes_nothing(
    engine: Engine, store: Interleaved, publisher: MemoryPublisher
) -> None:
    ids = [await parked(engine, publisher, f"d-{n}") for n in range(3)]
    running = await started(engine, "d-running")
    before = {i: (await store.get(i), await store.history(i)) for i in [*ids, running]}
    sent = len(publisher.published)

    report = await engine.bulk(
        SagaQuery(saga="order"), RetryRequested("try"), "operator:ann", limit=10, dry_run=True
    )

    assert report.dry_run and report.matched == 4
    assert report.counts[Outcome.APPLIED] == 3 and report.counts[Outcome.NOT_APPLICABLE] == 1
    assert set(report.sample) == set(ids)
    assert [r.saga_id for r in report.refusals] == [running]
    assert {i: (await store.get(i), await store.history(i)) for i in before} == before
    assert len(publisher.published) == sent


async def test_limit_caps_the_action_and_says_more_match(
    engine: Engine, publisher: MemoryPublisher
) -> None:
    ids = [await parked(engine, publisher, f"l-{n}") for n in range(5)]
    report = await engine.bulk(PARKED, RetryRequested("a few first"), "operator:ann", limit=3)
    assert (report.matched, report.more, report.counts[Outcome.APPLIED]) == (3, True, 3)
    rest = await engine.bulk(PARKED, RetryRequested("the rest"), "operator:ann", limit=3)
    assert (rest.matched, rest.more) == (2, False)
    assert sorted([*report.sample, *rest.sample]) == sorted(ids)  # each saga once


async def test_cancel_in_bulk_records_a_refused_cancel_as_one_cancel_does(
    engine: Engine, publisher: MemoryPublisher
) -> None:
    early = await started(engine, "x-1")
    late = await started(engine, "x-2")
    for _ in range(2):  # reserve_credit, reserve_stock: charge_payment, the pivot, is sent
        await answer(engine, publisher, late, ok=True)

    report = await engine.bulk(
        SagaQuery(status=SagaStatus.RUNNING), CancelRequested("recall"), "api:ann", limit=10
    )

    assert report.action == "cancel" and report.sample == (early,)
    [refused] = report.refusals
    assert refused.saga_id == late and "past the pivot" in refused.why
    state = await engine.store.get(early)
    assert state is not None and state.status == SagaStatus.COMPENSATING
    last = (await engine.store.history(late))[-1]
    assert (last.event, last.actor) == ("cancel_refused", "api:ann")
    assert [m.routing_key for m in publisher.published][-1] == "order.cancel_refused"


async def test_skip_in_bulk_completes_each_parked_step_with_the_result(
    engine: Engine, publisher: MemoryPublisher
) -> None:
    ids = [await parked(engine, publisher, f"s-{n}") for n in range(2)]
    action = SkipRequested("notify_customer", {"sent": "by post"}, "mailed a letter")
    report = await engine.bulk(PARKED, action, "operator:ann", limit=10)
    assert report.action == "skip" and report.counts[Outcome.APPLIED] == 2
    for saga_id in ids:
        state = await engine.store.get(saga_id)
        assert state is not None and state.status == SagaStatus.COMPLETED
        assert state.results()["notify_customer"] == {"sent": "by post"}


async def test_a_saga_of_a_version_not_loaded_is_refused(
    store: Interleaved, publisher: MemoryPublisher
) -> None:
    engine = Engine(store, publisher, Registry([order_v1]), clock=Clock())
    saga_id = await parked(engine, publisher, "v-1")
    elsewhere = Engine(store, publisher, Registry(), clock=Clock())
    report = await elsewhere.bulk(PARKED, RetryRequested("go"), "operator:ann", limit=10)
    [refusal] = report.refusals
    assert (refusal.saga_id, refusal.outcome) == (saga_id, Outcome.NOT_LOADED)
    assert "no version 1 loaded" in refusal.why
    assert (await events(engine, saga_id))[-1][0] == "operator_action_refused"


async def test_no_filter_or_no_reason_acts_on_nothing(
    engine: Engine, publisher: MemoryPublisher
) -> None:
    saga_id = await parked(engine, publisher, "n-1")
    before = await engine.store.history(saga_id)
    for query in (SagaQuery(), SagaQuery(limit=5)):  # paging is no filter
        with pytest.raises(NoFilter, match="say which sagas"):
            await engine.bulk(query, RetryRequested("all of them"), "operator:ann", limit=10)
    with pytest.raises(OperationRefused, match="say why"):
        await engine.bulk(PARKED, RetryRequested("  "), "operator:ann", limit=10)
    assert await engine.store.history(saga_id) == before
