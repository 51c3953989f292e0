"""Retention: delete sagas that finished for good long ago, and the cancels held for starts
that never came, in small batches.

What goes: sagas `completed`, `compensated` or `cancelled` whose last transition
(`updated_at`, served by the (status, updated_at) index) is older than the cutoff, with
everything keyed by their id: steps, history, semantic-lock rows, search field values
(foreign keys with ON DELETE CASCADE). Never a parked (`failed`) or paused saga, nor a
running one, whatever its age: they wait for an operator or for their participants. Never a
saga with a child that has not finished for good: the child answers its parent when it ends.

What else: `inbox` rows (cancels that arrived before their saga) older than the cutoff. The
outbox is left alone: a row there is a message not yet published, which the relay owns;
published rows are deleted by the relay itself. Definitions stay (`saga definitions`).

What an operator should know: the start key of a pruned saga is forgotten, so a start with
that key after the cutoff begins a new saga. Keep the retention longer than any retry of a
start by your services.

Each batch is one short transaction: the rows are taken with `FOR UPDATE SKIP LOCKED` (two
replicas pruning at once take different rows, and a saga some transaction holds is left for
the next sweep) and a `lock_timeout` bounds any wait on the cascaded rows, so a prune never
holds the engine up for long.

With an archive (`saga prune --archive`, SAGA_RETENTION_ARCHIVE; adapters/archive.py), the
batch's transaction locks its sagas, reads them whole (steps and history, oldest first by
their last transition), hands them to the archive, which returns once they are durable, and
only then deletes them and commits: an archive that fails rolls its batch back, so nothing is
deleted that was not written. Batches are archived in the order they are deleted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from uuid import UUID

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.postgres.rows import any_of, load_states
from adapters.postgres.store import load_history
from adapters.postgres.tables import saga_instances
from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState, SagaStatus

log = structlog.get_logger(__name__)

# Finished for good: nobody will act on these again. FAILED (parked) waits for an operator.
PRUNABLE = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED)
DEFAULT_BATCH = 1000
# How often `saga run` sweeps when SAGA_RETENTION is set (at once again after a full batch).
SWEEP_INTERVAL = 60.0

# Spelled into the SQL (constants, not input): the planner then uses the status index.
_STATUSES = "(" + ", ".join(f"'{s.value}'" for s in PRUNABLE) + ")"

_DOOMED = f"""
SELECT s.id FROM saga_instances s
WHERE s.status IN {_STATUSES} AND s.updated_at < :cutoff
  AND NOT EXISTS (
      SELECT 1 FROM saga_instances c
      WHERE c.parent_id = s.id AND c.status NOT IN {_STATUSES})
"""

# The cascade deletes steps, history, lock and search rows with each instance; the history's
# append-only trigger lets the delete through for this transaction only.
_DELETE_SAGAS = sa.text(
    f"DELETE FROM saga_instances WHERE id IN ({_DOOMED} LIMIT :batch FOR UPDATE OF s SKIP LOCKED)"
)
# With an archive: the batch's ids first, locked, then read and archived, then deleted.
_LOCK_SAGAS = sa.text(f"{_DOOMED} LIMIT :batch FOR UPDATE OF s SKIP LOCKED")
_DELETE_INBOX = sa.text(
    "DELETE FROM inbox WHERE id IN (SELECT id FROM inbox WHERE received_at < :cutoff"
    " LIMIT :batch FOR UPDATE SKIP LOCKED)"
)
_COUNT_SAGAS = sa.text(f"SELECT count(*) FROM ({_DOOMED}) d")
_COUNT_INBOX = sa.text("SELECT count(*) FROM inbox WHERE received_at < :cutoff")


class Archive(Protocol):
    async def write(self, sagas: Sequence[tuple[SagaState, Sequence[HistoryRecord]]]) -> None:
        """Keep the batch's sagas, each with its history, in the order given; return once
        they are durable, raise when they could not be kept."""


@dataclass(frozen=True)
class Pruned:
    sagas: int
    inbox: int
    batches: int
    seconds: float

    @property
    def sagas_per_second(self) -> float:
        return self.sagas / self.seconds if self.seconds > 0 else 0.0


def cutoff_for(older_than: timedelta, now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)) - older_than


async def prune_batch(
    engine: AsyncEngine,
    cutoff: datetime,
    batch: int = DEFAULT_BATCH,
    archive: Archive | None = None,
) -> int:
    """Delete at most `batch` prunable sagas that ended before `cutoff`, in one transaction,
    archived first when given an archive (whose failure deletes nothing). Returns how many
    went."""
    async with engine.begin() as conn:
        await _short_locks(conn)
        await conn.execute(sa.text("SELECT set_config('saga.allow_history_delete', 'on', true)"))
        if archive is None:
            deleted = await conn.execute(_DELETE_SAGAS, {"cutoff": cutoff, "batch": batch})
            return deleted.rowcount or 0
        ids = list((await conn.execute(_LOCK_SAGAS, {"cutoff": cutoff, "batch": batch})).scalars())
        if not ids:
            return 0
        await archive.write(await _whole(conn, ids))
        deleted = await conn.execute(
            sa.delete(saga_instances).where(any_of(saga_instances.c.id, ids))
        )
        return deleted.rowcount or 0


async def _whole(
    conn: AsyncConnection, ids: Sequence[UUID]
) -> list[tuple[SagaState, Sequence[HistoryRecord]]]:
    """The locked sagas with their steps and histories, the longest finished first."""
    i = saga_instances.c
    rows = (
        await conn.execute(
            sa.select(saga_instances).where(any_of(i.id, ids)).order_by(i.updated_at, i.id)
        )
    ).all()
    states = await load_states(conn, rows)
    histories = await load_history(conn, ids)
    return [(state, histories[state.saga_id]) for state in states]


async def prune_inbox_batch(
    engine: AsyncEngine, cutoff: datetime, batch: int = DEFAULT_BATCH
) -> int:
    """Delete at most `batch` held cancels received before `cutoff`."""
    async with engine.begin() as conn:
        await _short_locks(conn)
        deleted = await conn.execute(_DELETE_INBOX, {"cutoff": cutoff, "batch": batch})
        return deleted.rowcount or 0


async def prune(
    engine: AsyncEngine,
    older_than: timedelta,
    *,
    batch: int = DEFAULT_BATCH,
    now: datetime | None = None,
    on_batch: Callable[[int], object] | None = None,
    archive: Archive | None = None,
) -> Pruned:
    """Delete everything older than `older_than`, batch after batch, until a batch comes
    back short, each archived first when given an archive (a failure raises, the batch
    rolled back and the prune stopped; `on_batch` has counted those before it). The cutoff
    is fixed at the start, so a prune always ends."""
    cutoff = cutoff_for(older_than, now)
    began = time.perf_counter()
    sagas = inbox = batches = 0
    while True:
        n = await prune_batch(engine, cutoff, batch, archive)
        sagas += n
        batches += 1
        if on_batch is not None:
            on_batch(n)
        if n < batch:
            break
    while (n := await prune_inbox_batch(engine, cutoff, batch)) > 0:
        inbox += n
        if n < batch:
            break
    done = Pruned(sagas, inbox, batches, time.perf_counter() - began)
    log.info("retention_pruned", sagas=sagas, inbox=inbox, cutoff=cutoff.isoformat())
    return done


async def prunable(
    engine: AsyncEngine, older_than: timedelta, now: datetime | None = None
) -> tuple[int, int]:
    """(sagas, held cancels) a prune would delete now: for `saga prune --dry-run`."""
    cutoff = cutoff_for(older_than, now)
    async with engine.connect() as conn:
        sagas = await conn.scalar(_COUNT_SAGAS, {"cutoff": cutoff})
        inbox = await conn.scalar(_COUNT_INBOX, {"cutoff": cutoff})
    return int(sagas or 0), int(inbox or 0)


def retention_sweep(
    engine: AsyncEngine,
    older_than: timedelta,
    batch: int = DEFAULT_BATCH,
    archive: Archive | None = None,
    *,
    clock: Callable[[], datetime],
) -> Callable[[], Awaitable[bool]]:
    """One batch of sagas (and of held cancels) per call, for `saga run`'s sweep loop: True
    when a batch came back full, so the loop goes again at once. With an archive, a batch it
    could not write raises (logged by the loop) and is tried again at the next sweep.
    `clock`: what the cutoff counts back from (`saga run`'s database clock, which also wrote
    the sagas' `updated_at`)."""

    async def sweep() -> bool:
        cutoff = cutoff_for(older_than, clock())
        sagas = await prune_batch(engine, cutoff, batch, archive)
        inbox = await prune_inbox_batch(engine, cutoff, batch)
        if sagas or inbox:
            log.info("retention_swept", sagas=sagas, inbox=inbox)
        return batch in (sagas, inbox)

    return sweep


async def _short_locks(conn: AsyncConnection) -> None:
    # A cascaded row some transaction holds (a lock row being released) makes this batch
    # give up after a moment rather than queue the engine's transactions behind it.
    await conn.execute(sa.text("SELECT set_config('lock_timeout', '2s', true)"))
