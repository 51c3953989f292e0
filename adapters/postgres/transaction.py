"""PostgresTransaction: the SagaTransaction port, one database transaction on one connection."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.postgres import batch_write, driver, semantic_locks
from adapters.postgres.bulk import bulk_insert
from adapters.postgres.errors import translated
from adapters.postgres.rows import (
    any_of,
    instance_values,
    load_states,
    outbox_message,
    states_of,
    step_values,
)
from adapters.postgres.tables import inbox, outbox, saga_instances, saga_steps
from orchestrator.errors import ConcurrentUpdate
from orchestrator.locks import LockConflict, LockWaiter
from orchestrator.machine import HistoryEntry
from orchestrator.messages import OutboxMessage
from orchestrator.ports import HistoryAppends, SearchWrites, Transitions
from orchestrator.state import SagaState

# First half of a two-int advisory lock key: start keys get a key space of their own.
_START_KEY_LOCK = 0x5A6A

_INSERT_INSTANCES = bulk_insert(
    saga_instances,
    [c.name for c in saga_instances.c],
    "ON CONFLICT (name, key) DO NOTHING RETURNING id",
)
_INSERT_STEPS = bulk_insert(saga_steps, [c.name for c in saga_steps.c])
# The reply path's reads, as psycopg text (adapters/postgres/driver.py). ORDER BY before
# FOR UPDATE: rows are locked in id order, so lockers of overlapping sets cannot deadlock.
_LOCK_BY_IDS = (
    f"SELECT {', '.join(c.name for c in saga_instances.c)} FROM saga_instances"
    " WHERE id = ANY(CAST(%(ids)s AS uuid[])) ORDER BY id FOR UPDATE"
)
_STEPS_OF = (
    f"SELECT {', '.join(c.name for c in saga_steps.c)} FROM saga_steps"
    " WHERE saga_id = ANY(CAST(%(ids)s AS uuid[])) ORDER BY saga_id, idx"
)
_TAKE_HELD_CANCELS = """
    DELETE FROM inbox i
    USING unnest(CAST(%(sagas)s AS text[]), CAST(%(keys)s AS text[])) AS s(saga, key)
    WHERE i.kind = 'cancel' AND i.key = s.key AND (i.saga IS NULL OR i.saga = s.saga)
    RETURNING i.id, i.key, i.saga, i.reason
"""
_LOCK_START_KEYS = """
    SELECT pg_advisory_xact_lock(%(space)s, h)
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(CAST(%(keys)s AS text[])) AS k ORDER BY h) s
"""


class PostgresTransaction:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def insert(self, state: SagaState) -> bool:
        return bool(await self.insert_all([state]))

    async def insert_all(self, states: Sequence[SagaState]) -> set[UUID]:
        if not states:
            return set()
        inserted = await self._fetch(
            _INSERT_INSTANCES.statement,
            _INSERT_INSTANCES.params([instance_values(s) for s in states]),
        )
        ids = {row.id for row in inserted}
        await self._insert_steps(
            [
                {"saga_id": state.saga_id, **step_values(step)}
                for state in states
                if state.saga_id in ids
                for step in state.steps
            ]
        )
        return ids

    async def _insert_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await self._fetch(_INSERT_STEPS.statement, _INSERT_STEPS.params(rows))

    async def lock(self, saga_id: UUID) -> SagaState | None:
        found = await self.lock_all([saga_id])
        return found[0] if found else None

    async def lock_all(self, saga_ids: Sequence[UUID]) -> list[SagaState]:
        rows = await self._fetch(_LOCK_BY_IDS, {"ids": list(saga_ids)})
        if not rows:
            return []
        # A statement of its own, after the lock: under READ COMMITTED it sees what the
        # previous lock holder committed (rows.load_states says why).
        steps = await self._fetch(_STEPS_OF, {"ids": [row.id for row in rows]})
        return states_of(rows, steps)

    async def lock_by_key(self, key: str, saga: str | None) -> list[SagaState]:
        await self._serialise_start_key(key)
        where = saga_instances.c.key == key
        if saga is not None:
            where &= saga_instances.c.name == saga
        return await self._locked(where, order_by=saga_instances.c.created_at)

    async def claim_due(self, now: datetime, limit: int) -> list[SagaState]:
        found = await self._execute(
            sa.select(saga_instances)
            .where(saga_instances.c.next_due_at <= now)
            .order_by(saga_instances.c.next_due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return await load_states(self._conn, found.all())

    async def append_history(
        self, saga_id: UUID, entries: Sequence[HistoryEntry], actor: str
    ) -> None:
        await self.save_batch([], [(saga_id, entries, actor)], [])

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> list[OutboxMessage]:
        return await self.save_batch([], [], messages)

    async def save_batch(
        self,
        changes: Transitions,
        appends: HistoryAppends,
        messages: Sequence[OutboxMessage],
        search: SearchWrites = (),
    ) -> list[OutboxMessage]:
        for before, after in changes:
            _check_transition(before, after)
        if not (changes or any(entries for _, entries, _ in appends) or messages or search):
            return []
        params = batch_write.params(changes, appends, messages, search)
        (found,) = await self._fetch(batch_write.STATEMENT, params)
        if found.moved != len(changes):
            raise ConcurrentUpdate(
                f"{len(changes) - found.moved} of sagas "
                f"{', '.join(str(b.saga_id) for b, _ in changes)} moved on from the revision "
                "they were read at; reload them and decide again"
            )
        # A map step's items, as it begins.
        await self._insert_steps(
            [
                {"saga_id": after.saga_id, **step_values(s)}
                for before, after in changes
                for s in after.steps[len(before.steps) :]
            ]
        )
        # The sequence numbers the rows in the order unnest yields them, which is the order
        # of `messages`, whatever order RETURNING lists them in.
        return [replace(m, id=i) for m, i in zip(messages, found.ids, strict=True)]

    async def hold_cancel(self, key: str, saga: str | None, reason: str) -> None:
        await self._execute(
            sa.insert(inbox).values(kind="cancel", key=key, saga=saga, reason=reason)
        )

    async def take_held_cancel(self, saga: str, key: str) -> str | None:
        return (await self.take_held_cancels([(saga, key)])).get((saga, key))

    async def take_held_cancels(
        self, starts: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        if not starts:
            return {}
        await self._serialise_start_keys([key for _, key in starts])
        taken = await self._fetch(
            _TAKE_HELD_CANCELS,
            {"sagas": [saga for saga, _ in starts], "keys": [key for _, key in starts]},
        )
        # As if the starts had come one by one: each takes every cancel held for it that an
        # earlier one did not take, and the oldest of them says why.
        rows = sorted(taken, key=lambda r: r.id)
        reasons: dict[tuple[str, str], str] = {}
        for saga, key in starts:
            mine = [r for r in rows if r.key == key and r.saga in (None, saga)]
            rows = [r for r in rows if r not in mine]
            if mine:
                reasons[(saga, key)] = str(mine[0].reason)
        return reasons

    async def claim_outbox(self, older_than: timedelta, limit: int) -> list[OutboxMessage]:
        found = await self._execute(
            sa.select(outbox)
            .where(outbox.c.created_at < sa.func.now() - older_than)
            .order_by(outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [outbox_message(row) for row in found]

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        if ids:
            await self._execute(sa.delete(outbox).where(any_of(outbox.c.id, ids)))

    # -- semantic locks: adapters/postgres/semantic_locks.py ------------------------------

    async def acquire_locks(
        self,
        resources: Sequence[str],
        *,
        saga_id: UUID,
        saga: str,
        key: str,
        now: datetime,
        waited_as: int | None = None,
    ) -> LockConflict | None:
        return await semantic_locks.acquire(
            self._conn, resources, saga_id=saga_id, saga=saga, key=key, now=now, waited_as=waited_as
        )

    async def release_locks(self, saga_id: UUID) -> tuple[str, ...]:
        return await semantic_locks.release(self._conn, saga_id)

    async def enqueue_lock_waiter(self, waiter: LockWaiter) -> bool:
        return await semantic_locks.enqueue(self._conn, waiter)

    async def claim_lock_waiters(
        self,
        now: datetime,
        *,
        freed: Sequence[str] | None,
        sagas: Collection[tuple[str, int]],
        limit: int,
    ) -> list[LockWaiter]:
        # A claimed waiter is started in this transaction, which must then hold its start
        # key like a start does (a cancel by that key waits for it): the claim tries that
        # lock too, and leaves a waiter whose key is busy to a later sweep.
        return await semantic_locks.claim(
            self._conn, now, freed=freed, sagas=sagas, limit=limit, start_key_space=_START_KEY_LOCK
        )

    async def expire_lock_waiters(self, now: datetime, limit: int) -> list[LockWaiter]:
        return await semantic_locks.expire(self._conn, now, limit)

    async def remove_lock_waiters(self, key: str, saga: str | None) -> list[LockWaiter]:
        return await semantic_locks.remove(self._conn, key, saga)

    # -- helpers ----------------------------------------------------------------------------

    async def _execute(
        self,
        statement: sa.Executable,
        params: Sequence[dict[str, Any]] | dict[str, Any] | None = None,
    ) -> sa.CursorResult[Any]:
        with translated():
            return await self._conn.execute(statement, params)

    async def _fetch(self, query: str, params: dict[str, Any]) -> list[Any]:
        with translated():
            return await driver.fetch(self._conn, query, params)

    async def _locked(
        self, where: sa.ColumnElement[bool], order_by: sa.ColumnElement[Any] | None = None
    ) -> list[SagaState]:
        query = sa.select(saga_instances).where(where).with_for_update()
        if order_by is not None:
            query = query.order_by(order_by)
        found = await self._execute(query)
        return await load_states(self._conn, found.all())

    async def _serialise_start_key(self, key: str) -> None:
        await self._serialise_start_keys([key])

    async def _serialise_start_keys(self, keys: Sequence[str]) -> None:
        """Serialise a start and a cancel by the same key.

        Without it, a cancel could find no saga (the start has not committed yet) and be
        held, while the start had already looked for held cancels and found none: the cancel
        would be lost. Under READ COMMITTED the statement after this one sees the other's
        commit. Many keys are locked in one order, so two batches cannot deadlock on them.
        """
        await self._fetch(_LOCK_START_KEYS, {"space": _START_KEY_LOCK, "keys": list(keys)})


def _check_transition(before: SagaState, after: SagaState) -> None:
    if after.saga_id != before.saga_id:
        raise ValueError(f"save: before is saga {before.saga_id}, after is saga {after.saga_id}")
    if after.revision != before.revision + 1:
        raise ValueError(
            f"save: after.revision must be {before.revision + 1}, not {after.revision}"
        )
    if len(after.steps) < len(before.steps):
        raise ValueError("save: a transition cannot remove steps")
