"""The participant barrier on real PostgreSQL: duplicates replay the stored reply, a compensation
before its action is a no-op, an action after its compensation is refused, concurrent
deliveries run the effect once. Effects go to a ledger with no unique constraint, so a double
effect is two rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.participant import Participant, StepFailed
from adapters.participant.barrier import Barrier
from adapters.postgres.database import make_engine
from orchestrator.messages import Command
from tests.fixtures.polling import eventually

pytestmark = pytest.mark.timeout(60)

SCHEMA = "participant"
ledger_metadata = sa.MetaData(schema=SCHEMA)
effects = sa.Table(
    "effects",
    ledger_metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("saga_id", sa.Uuid, nullable=False),
    sa.Column("step", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=5)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def barrier(engine: AsyncEngine) -> Barrier:
    barrier = Barrier(engine, schema=SCHEMA)
    await barrier.install()
    async with engine.begin() as conn:
        await conn.run_sync(ledger_metadata.create_all)
    return barrier


def command(
    kind: Literal["action", "compensation"] = "action",
    *,
    saga_id: uuid.UUID | None = None,
    step: str = "charge",
    attempt: int = 1,
) -> Command:
    """A fresh delivery (its own command_id) of (saga_id, step, kind)."""
    saga_id = saga_id or uuid.uuid4()
    return Command(
        command_id=uuid.uuid4(),
        saga_id=saga_id,
        saga="order",
        step=step,
        kind=kind,
        attempt=attempt,
        idempotency_key=f"{saga_id}:{step}:{kind}",
        payload={"amount": "10.00"},
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        command="payments.charge" if kind == "action" else "payments.refund",
    )


class Handler:
    """Writes one ledger row per call, then answers `result` or raises the next of `errors`."""

    def __init__(
        self, result: dict[str, Any] | None = None, errors: list[Exception] | None = None
    ) -> None:
        self.result = result if result is not None else {"done": True}
        self.errors = list(errors or [])
        self.calls = 0
        self.hold: asyncio.Event | None = None  # set: the handler waits for it after writing

    async def __call__(self, cmd: Command, conn: AsyncConnection) -> dict[str, Any] | None:
        self.calls += 1
        await conn.execute(
            sa.insert(effects).values(saga_id=cmd.saga_id, step=cmd.step, kind=cmd.kind)
        )
        if self.hold is not None:
            await self.hold.wait()
        if self.errors:
            raise self.errors.pop(0)
        return self.result


async def applied(engine: AsyncEngine, saga_id: uuid.UUID, kind: str = "action") -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            sa.select(sa.func.count()).where(effects.c.saga_id == saga_id, effects.c.kind == kind)
        )
    return int(count or 0)


async def barrier_rows(engine: AsyncEngine, barrier: Barrier, saga_id: uuid.UUID) -> dict[str, Any]:
    t = barrier.table
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(t.c.kind, t.c.written_by, t.c.outcome).where(t.c.saga_id == saga_id)
        )
    return {r.kind: (r.written_by, r.outcome) for r in rows}


async def someone_waits_for_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        waiting = await conn.scalar(
            sa.text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE NOT l.granted AND a.datname = current_database()"
            )
        )
    return bool(waiting)


# -- actions -----------------------------------------------------------------------------------


async def test_a_duplicate_action_returns_the_stored_reply_and_runs_once(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    handler = Handler({"charge_id": "c-1", "amount": "10.00"})
    guarded = barrier.guard(handler)
    first = command()
    assert await guarded(first) == {"charge_id": "c-1", "amount": "10.00"}
    # A redelivery (same command) and a retry (new command_id, next attempt), same key.
    again = await guarded(first)
    retry = await guarded(command(saga_id=first.saga_id, attempt=2))
    assert again == retry == {"charge_id": "c-1", "amount": "10.00"}
    assert handler.calls == 1
    assert await applied(engine, first.saga_id) == 1


async def test_a_duplicate_non_retryable_failure_replays_the_failure(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    handler = Handler(errors=[StepFailed("card_declined", "no funds", retryable=False)])
    guarded = barrier.guard(handler)
    cmd = command()
    for _ in range(2):
        with pytest.raises(StepFailed) as failed:
            await guarded(cmd)
        assert (failed.value.type, failed.value.message) == ("card_declined", "no funds")
        assert failed.value.retryable is False
    assert handler.calls == 1
    assert await applied(engine, cmd.saga_id) == 0, "the failed effect is rolled back"
    assert await barrier_rows(engine, barrier, cmd.saga_id) == {"action": ("action", "failure")}


async def test_a_compensation_slipping_in_before_a_failure_is_stored_wins(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    """The failed action's transaction rolls back before its failure row is written: a
    compensation waiting on the row gets in between. Whoever wins, nothing is left applied,
    the barrier agrees with the reply, and the compensation undoes nothing."""
    saga_id = uuid.uuid4()
    do = Handler(errors=[StepFailed("card_declined", "no funds", retryable=False)])
    do.hold = asyncio.Event()
    undo = Handler({"refunded": True})
    action = asyncio.ensure_future(barrier.guard(do)(command(saga_id=saga_id)))

    async def action_running() -> bool:
        return do.calls == 1

    await eventually(action_running, message="the action running")
    compensation = asyncio.ensure_future(
        barrier.guard(undo)(command("compensation", saga_id=saga_id))
    )
    await eventually(lambda: someone_waits_for_a_lock(engine), message="a blocked compensation")
    do.hold.set()
    with pytest.raises(StepFailed) as failed:
        await action
    assert await compensation == {"null_compensation": True}
    assert undo.calls == 0
    assert await applied(engine, saga_id) == 0
    rows = await barrier_rows(engine, barrier, saga_id)
    if failed.value.type == "compensated_already":  # the compensation's marker came first
        assert rows["action"] == ("compensation", None)
    else:
        assert failed.value.type == "card_declined"
        assert rows["action"] == ("action", "failure")
    assert rows["compensation"] == ("compensation", "success")


@pytest.mark.parametrize(
    "error",
    [StepFailed("smtp_unavailable", "try later", retryable=True), RuntimeError("crashed")],
    ids=["retryable", "crash"],
)
async def test_a_retryable_failure_leaves_no_row_so_the_retry_runs(
    barrier: Barrier, engine: AsyncEngine, error: Exception
) -> None:
    handler = Handler({"sent": True}, errors=[error])
    guarded = barrier.guard(handler)
    cmd = command()
    with pytest.raises(type(error)):
        await guarded(cmd)
    assert await barrier_rows(engine, barrier, cmd.saga_id) == {}
    assert await applied(engine, cmd.saga_id) == 0
    assert await guarded(command(saga_id=cmd.saga_id, attempt=2)) == {"sent": True}
    assert handler.calls == 2
    assert await applied(engine, cmd.saga_id) == 1


async def test_a_result_that_is_not_json_is_a_stored_failure_without_effect(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    handler = Handler({"at": object()})
    cmd = command()
    with pytest.raises(StepFailed) as failed:
        await barrier.guard(handler)(cmd)
    assert failed.value.type == "invalid_result" and not failed.value.retryable
    assert await applied(engine, cmd.saga_id) == 0


# -- compensations -----------------------------------------------------------------------------


async def test_a_compensation_before_its_action_is_a_null_compensation(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    undo = Handler({"refunded": True})
    cmd = command("compensation")
    assert await barrier.guard(undo)(cmd) == {"null_compensation": True}
    assert await barrier.guard(undo)(cmd) == {"null_compensation": True}, "duplicate: same reply"
    assert undo.calls == 0
    assert await barrier_rows(engine, barrier, cmd.saga_id) == {
        "action": ("compensation", None),
        "compensation": ("compensation", "success"),
    }


async def test_an_action_after_its_compensation_is_refused(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    saga_id = uuid.uuid4()
    do, undo = Handler(), Handler()
    await barrier.guard(undo)(command("compensation", saga_id=saga_id))
    for attempt in (1, 2):
        with pytest.raises(StepFailed) as refused:
            await barrier.guard(do)(command(saga_id=saga_id, attempt=attempt))
        assert refused.value.type == "compensated_already" and not refused.value.retryable
    assert do.calls == 0 and undo.calls == 0
    assert await applied(engine, saga_id) == 0


async def test_a_compensation_after_its_action_undoes_it_once(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    saga_id = uuid.uuid4()
    do, undo = Handler(), Handler({"refunded": "10.00"})
    await barrier.guard(do)(command(saga_id=saga_id))
    comp = command("compensation", saga_id=saga_id)
    assert await barrier.guard(undo)(comp) == {"refunded": "10.00"}
    assert await barrier.guard(undo)(comp) == {"refunded": "10.00"}
    assert undo.calls == 1
    assert await applied(engine, saga_id, "compensation") == 1


async def test_a_compensation_of_a_failed_action_has_nothing_to_undo(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    # A timed-out step is compensated even if the participant did answer, with a failure.
    saga_id = uuid.uuid4()
    do = Handler(errors=[StepFailed("out_of_stock", retryable=False)])
    undo = Handler()
    with pytest.raises(StepFailed):
        await barrier.guard(do)(command(saga_id=saga_id))
    assert await barrier.guard(undo)(command("compensation", saga_id=saga_id)) == {
        "null_compensation": True
    }
    assert undo.calls == 0


async def test_a_non_retryable_compensation_failure_is_not_stored(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    # It parks the saga; the operator's retry (same key) must run the compensation again.
    saga_id = uuid.uuid4()
    await barrier.guard(Handler())(command(saga_id=saga_id))
    undo = Handler({"refunded": True}, errors=[StepFailed("bank_down", retryable=False)])
    with pytest.raises(StepFailed):
        await barrier.guard(undo)(command("compensation", saga_id=saga_id))
    assert await applied(engine, saga_id, "compensation") == 0
    assert await barrier.guard(undo)(command("compensation", saga_id=saga_id, attempt=2)) == {
        "refunded": True
    }
    assert undo.calls == 2
    assert await applied(engine, saga_id, "compensation") == 1


# -- concurrency -------------------------------------------------------------------------------


async def test_two_concurrent_deliveries_run_the_effect_once(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    handler = Handler({"charge_id": "c-7"})
    handler.hold = asyncio.Event()
    guarded = barrier.guard(handler)
    cmd = command()

    async def release_once_the_other_waits() -> None:
        # The first delivery is inside its handler; the second must be blocked on the
        # barrier row, not running the handler too.
        await eventually(lambda: someone_waits_for_a_lock(engine), message="a blocked delivery")
        assert handler.calls == 1
        assert handler.hold is not None
        handler.hold.set()

    first, second, _ = await asyncio.gather(
        guarded(cmd),
        guarded(command(saga_id=cmd.saga_id, attempt=2)),
        release_once_the_other_waits(),
    )
    assert first == second == {"charge_id": "c-7"}
    assert handler.calls == 1
    assert await applied(engine, cmd.saga_id) == 1


async def test_a_compensation_racing_its_action_waits_then_undoes_it(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    saga_id = uuid.uuid4()
    do, undo = Handler(), Handler({"refunded": True})
    do.hold = asyncio.Event()
    action = asyncio.ensure_future(barrier.guard(do)(command(saga_id=saga_id)))

    async def action_running() -> bool:
        return do.calls == 1

    await eventually(action_running, message="the action running")
    compensation = asyncio.ensure_future(
        barrier.guard(undo)(command("compensation", saga_id=saga_id))
    )
    await eventually(lambda: someone_waits_for_a_lock(engine), message="a blocked compensation")
    assert undo.calls == 0
    do.hold.set()
    assert await action == {"done": True}
    assert await compensation == {"refunded": True}, "not a null compensation: the action ran"
    assert undo.calls == 1


# -- through the SDK, prune, install -----------------------------------------------------------


async def test_a_refused_action_becomes_a_non_retryable_failure_reply(barrier: Barrier) -> None:
    payments = Participant("payments")
    payments.handler("payments.charge")(barrier.guard(Handler()))
    payments.handler("payments.refund")(barrier.guard(Handler()))
    saga_id = uuid.uuid4()
    now = datetime.now(UTC)
    undone = await payments.handle(command("compensation", saga_id=saga_id), now)
    assert undone.outcome == "success" and undone.result == {"null_compensation": True}
    refused = await payments.handle(command(saga_id=saga_id), now)
    assert refused.outcome == "failure" and refused.error is not None
    assert (refused.error.type, refused.error.retryable) == ("compensated_already", False)


async def test_prune_deletes_old_rows_only(barrier: Barrier, engine: AsyncEngine) -> None:
    old = [uuid.uuid4() for _ in range(5)]
    new = [uuid.uuid4() for _ in range(3)]
    for saga_id in old + new:
        await barrier.guard(Handler())(command(saga_id=saga_id))
    t = barrier.table
    async with engine.begin() as conn:
        await conn.execute(
            sa.update(t)
            .where(t.c.saga_id.in_(old))
            .values(created_at=sa.func.now() - timedelta(days=8))
        )
    assert await barrier.prune(timedelta(days=7), batch=2) == 5
    async with engine.connect() as conn:
        left = set((await conn.scalars(sa.select(t.c.saga_id))).all())
    assert left == set(new)
    assert await barrier.prune(timedelta(days=7)) == 0


async def test_install_twice_and_concurrently_is_fine(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    await barrier.install()
    # Same table and same new schema from several processes at once.
    others = [Barrier(engine, table=f"other_{i % 2}", schema="fresh") for i in range(4)]
    await asyncio.gather(*(b.install() for b in others))
    cmd = command()
    await barrier.guard(Handler())(cmd)
    assert await others[0].guard(Handler())(cmd) == {"done": True}, "a separate, working table"


async def test_an_expired_retry_of_a_settled_action_is_answered_from_the_barrier(
    barrier: Barrier, engine: AsyncEngine
) -> None:
    """Attempt 1 charged and its answer was lost; attempt 2 reaches the participant expired.
    Refusing it ("expired") would have the saga undo the rest while the charge stands: the
    barrier's answer is given instead, and nothing runs again. An expired command the barrier
    knows nothing of is still refused."""
    payments = Participant("payments")
    handler = Handler({"charge_id": "c-1"})
    payments.handler("payments.charge")(barrier.guard(handler))
    first = command()
    assert (await payments.handle(first, datetime.now(UTC))).outcome == "success"
    late = datetime.now(UTC) + timedelta(hours=1)  # past every command's expires_at
    retry = await payments.handle(command(saga_id=first.saga_id, attempt=2), late)
    assert (retry.outcome, retry.result) == ("success", {"charge_id": "c-1"})
    assert handler.calls == 1 and await applied(engine, first.saga_id) == 1
    unknown = await payments.handle(command(), late)
    assert unknown.outcome == "failure" and unknown.error is not None
    assert unknown.error.type == "expired" and handler.calls == 1
