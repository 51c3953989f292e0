"""Semantic locks on PostgreSQL: the resources sagas hold (`saga_locks`), the starts waiting
for them (`saga_lock_waiters`, oldest first), and the advisory locks that serialise everyone
who takes or gives back the same resource. PostgresTransaction delegates here.

Why advisory locks and not just the rows: a start that finds a resource held queues a waiter,
and the saga holding it grants waiters when it gives the resource back. Without one lock both
could run at once, each blind to the other's uncommitted row (the holder sees no waiter, the
start sees the resource still held) and the waiter would wait for a release that has already
happened. So whoever takes or gives back a resource first holds that resource's transaction
advisory lock, and under READ COMMITTED the statement after it sees the other's commit.

Deadlocks: takers and givers block on those locks in one order (sorted lock keys). Granting
waiters only *tries* further locks and leaves a waiter it cannot lock to the sweep, so it
never waits while holding others. Two transactions that each release several sagas (a timer
batch) can still deadlock in a rare interleaving; PostgreSQL aborts one (40P01), which
surfaces as ConcurrentUpdate and is retried like any lost race.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.postgres.errors import translated
from adapters.postgres.tables import saga_instances, saga_lock_waiters, saga_locks
from orchestrator.locks import HeldLock, LockConflict, LocksView, LockWaiter
from orchestrator.messages import ParentRef
from orchestrator.state import SagaStatus

_waiters = saga_lock_waiters
_earlier = saga_lock_waiters.alias("earlier")
_Keys = ARRAY(sa.BigInteger)
_Resources = ARRAY(sa.Text)

# unnest yields the keys in array order, and each row's lock is taken as the row is produced:
# the locks are taken in the order given.
_LOCK = sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(:keys) AS k").bindparams(
    sa.bindparam("keys", type_=_Keys)
)
_TRY_LOCK = sa.text(
    "SELECT bool_and(pg_try_advisory_xact_lock(k))"
    " AND pg_try_advisory_xact_lock(:space, hashtext(:start_key)) FROM unnest(:keys) AS k"
).bindparams(sa.bindparam("keys", type_=_Keys))


def lock_key(resource: str) -> int:
    """The resource's advisory lock: a stable 64-bit hash (Python's hash() differs between
    processes). A collision only makes two resources wait for each other, never share a lock
    row."""
    digest = hashlib.blake2b(resource.encode(), digest_size=8, person=b"saga-lock").digest()
    return int.from_bytes(digest, "big", signed=True)


async def acquire(
    conn: AsyncConnection,
    resources: Sequence[str],
    *,
    saga_id: UUID,
    saga: str,
    key: str,
    now: datetime,
    waited_as: int | None = None,
) -> LockConflict | None:
    wanted = sorted(set(resources))
    if not wanted:
        return None
    await _serialise(conn, wanted)
    held = (
        await _execute(
            conn,
            sa.select(saga_locks.c.resource, saga_locks.c.saga_id, saga_locks.c.key)
            .where(saga_locks.c.resource.in_(wanted))
            .order_by(saga_locks.c.resource)
            .limit(1),
        )
    ).first()
    if held is not None:
        return LockConflict(held.resource, held_by=held.saga_id, held_by_key=held.key)
    ahead = sa.select(_waiters.c.resources).where(
        _waiters.c.resources.overlap(_array(wanted)), _live(_waiters, now)
    )
    if waited_as is not None:
        ahead = ahead.where(_waiters.c.id < waited_as)
    queued = (await _execute(conn, ahead.order_by(_waiters.c.id).limit(1))).scalar()
    if queued is not None:
        return LockConflict(min(set(wanted) & set(queued)), held_by=None)
    await _execute(
        conn,
        sa.insert(saga_locks),
        [
            {"resource": r, "saga_id": saga_id, "saga": saga, "key": key, "acquired_at": now}
            for r in wanted
        ],
    )
    return None


async def release(conn: AsyncConnection, saga_id: UUID) -> tuple[str, ...]:
    held = (
        (
            await _execute(
                conn, sa.select(saga_locks.c.resource).where(saga_locks.c.saga_id == saga_id)
            )
        )
        .scalars()
        .all()
    )
    if not held:
        return ()
    # Only the saga's own transitions (under its row lock) delete its rows: what was read
    # above is still what it holds once the advisory locks are ours.
    await _serialise(conn, held)
    deleted = await _execute(
        conn,
        sa.delete(saga_locks)
        .where(saga_locks.c.saga_id == saga_id)
        .returning(saga_locks.c.resource),
    )
    return tuple(sorted(deleted.scalars().all()))


async def enqueue(conn: AsyncConnection, waiter: LockWaiter) -> bool:
    inserted = await _execute(
        conn,
        pg_insert(_waiters)
        .values(
            saga=waiter.saga,
            version=waiter.version,
            key=waiter.key,
            input=waiter.input,
            resources=sorted(set(waiter.resources)),
            enqueued_at=waiter.enqueued_at,
            expires_at=waiter.expires_at,
            parent=None if waiter.parent is None else waiter.parent.model_dump(mode="json"),
        )
        .on_conflict_do_nothing(index_elements=[_waiters.c.saga, _waiters.c.key])
        .returning(_waiters.c.id),
    )
    return inserted.first() is not None


async def claim(
    conn: AsyncConnection,
    now: datetime,
    *,
    freed: Sequence[str] | None,
    sagas: Collection[tuple[str, int]],
    limit: int,
    start_key_space: int,
) -> list[LockWaiter]:
    if not sagas or limit <= 0 or (freed is not None and not freed):
        return []
    # Candidates on this statement's snapshot: free resources, nobody older queued for them.
    # Two candidates never share a resource (the older would bar the younger), so claiming
    # one cannot spoil another.
    query = (
        sa.select(_waiters)
        .where(
            _live(_waiters, now),
            sa.tuple_(_waiters.c.saga, _waiters.c.version).in_(sorted(sagas)),
            ~_held_any(_waiters.c.resources),
            ~_older_waiter(_waiters.c.id, _waiters.c.resources, now),
        )
        .order_by(_waiters.c.id)
        .limit(limit)
        .with_for_update(of=_waiters, skip_locked=True)
    )
    if freed is not None:
        query = query.where(_waiters.c.resources.overlap(_array(freed)))
    candidates = [_waiter(row) for row in await _execute(conn, query)]
    claimed = []
    for waiter in candidates:
        assert waiter.id is not None
        locked = await _execute(
            conn,
            _TRY_LOCK,
            [
                {
                    "keys": sorted({lock_key(r) for r in waiter.resources}),
                    "space": start_key_space,
                    "start_key": waiter.key,
                }
            ],
        )
        if not locked.scalar():
            continue  # someone takes or gives back one of them right now: the sweep retries
        # Checked again now that the resources are ours: the candidate query ran before.
        barred = await _execute(
            conn,
            sa.select(
                sa.or_(
                    _held_any(_array(waiter.resources)),
                    _older_waiter(sa.literal(waiter.id), _array(waiter.resources), now),
                )
            ),
        )
        if barred.scalar():
            continue
        await _execute(conn, sa.delete(_waiters).where(_waiters.c.id == waiter.id))
        claimed.append(waiter)
    return claimed


async def expire(conn: AsyncConnection, now: datetime, limit: int) -> list[LockWaiter]:
    due = (
        sa.select(_waiters.c.id)
        .where(_waiters.c.expires_at <= now)
        .order_by(_waiters.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    deleted = await _execute(
        conn, sa.delete(_waiters).where(_waiters.c.id.in_(due)).returning(*_waiters.c)
    )
    return sorted((_waiter(row) for row in deleted), key=lambda w: w.id or 0)


async def remove(conn: AsyncConnection, key: str, saga: str | None) -> list[LockWaiter]:
    where = _waiters.c.key == key
    if saga is not None:
        where &= _waiters.c.saga == saga
    deleted = await _execute(conn, sa.delete(_waiters).where(where).returning(*_waiters.c))
    return sorted((_waiter(row) for row in deleted), key=lambda w: w.id or 0)


async def view(conn: AsyncConnection) -> LocksView:
    held = await _execute(
        conn,
        sa.select(saga_locks, saga_instances.c.status)
        .outerjoin(saga_instances, saga_instances.c.id == saga_locks.c.saga_id)
        .order_by(saga_locks.c.acquired_at, saga_locks.c.resource),
    )
    waiting = await _execute(conn, sa.select(_waiters).order_by(_waiters.c.id))
    return LocksView(
        held=tuple(
            HeldLock(
                resource=row.resource,
                saga_id=row.saga_id,
                saga=row.saga,
                key=row.key,
                acquired_at=row.acquired_at,
                status=None if row.status is None else SagaStatus(row.status),
            )
            for row in held
        ),
        waiting=tuple(_waiter(row) for row in waiting),
    )


# -- helpers ------------------------------------------------------------------------------


async def _execute(
    conn: AsyncConnection, statement: sa.Executable, params: Sequence[dict[str, Any]] | None = None
) -> sa.CursorResult[Any]:
    with translated():
        return await conn.execute(statement, params)


async def _serialise(conn: AsyncConnection, resources: Sequence[str]) -> None:
    """Hold each resource's advisory lock until the transaction ends, taken in key order."""
    await _execute(conn, _LOCK, [{"keys": sorted({lock_key(r) for r in resources})}])


def _array(values: Sequence[str]) -> sa.BindParameter[Any]:
    return sa.bindparam(None, list(values), type_=_Resources)


def _live(waiters: sa.FromClause, now: datetime) -> sa.ColumnElement[bool]:
    """A waiter whose wait has not run out: an expired one bars nobody (the sweep rejects it)."""
    return sa.or_(waiters.c.expires_at.is_(None), waiters.c.expires_at > now)


def _held_any(resources: sa.ColumnElement[Any]) -> sa.Exists:
    return sa.exists().where(saga_locks.c.resource == sa.any_(resources))


def _older_waiter(
    waiter_id: sa.ColumnElement[Any], resources: sa.ColumnElement[Any], now: datetime
) -> sa.Exists:
    return sa.exists().where(
        _earlier.c.id < waiter_id,
        _earlier.c.resources.overlap(resources),
        _live(_earlier, now),
    )


def _waiter(row: Any) -> LockWaiter:
    return LockWaiter(
        saga=row.saga,
        version=row.version,
        key=row.key,
        input=row.input,
        resources=tuple(row.resources),
        enqueued_at=row.enqueued_at,
        expires_at=row.expires_at,
        id=row.id,
        parent=None if row.parent is None else ParentRef.model_validate(row.parent),
    )
