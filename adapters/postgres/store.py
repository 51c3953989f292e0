"""PostgresStore: the SagaStore port on SQLAlchemy Core and psycopg 3 (no ORM)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.postgres import semantic_locks
from adapters.postgres.errors import translated
from adapters.postgres.rows import any_of, load_states
from adapters.postgres.tables import (
    SEARCH_COLUMNS,
    saga_definitions,
    saga_history,
    saga_instances,
    saga_search,
    saga_steps,
)
from adapters.postgres.transaction import PostgresTransaction
from orchestrator.definition_diff import changes
from orchestrator.errors import DefinitionConflict
from orchestrator.locks import LocksView
from orchestrator.ports import (
    DefinitionRecord,
    HistoryRecord,
    RegisteredDefinition,
    Registration,
    SagaQuery,
    VersionInUse,
    WaitingFor,
)
from orchestrator.search_filters import COMPARE, SearchCondition
from orchestrator.state import SagaState, SagaStatus, StepStatus
from orchestrator.versioning import UNFINISHED


class PostgresStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Reads of a saga span two statements (instance, steps): one snapshot for both, so a
        # transition committed in between is seen whole or not at all.
        self._reader = engine.execution_options(isolation_level="REPEATABLE READ")

    @property
    def db_engine(self) -> AsyncEngine:
        """The connection pool: for health checks and gauges that read the database."""
        return self._engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        """Commit when the block ends normally, roll back when it raises."""
        with translated():
            async with self._engine.begin() as conn:
                yield PostgresTransaction(conn)

    async def register(
        self, record: DefinitionRecord, *, replace_unused: bool = False
    ) -> Registration:
        d = saga_definitions.c
        key = (d.name == record.name, d.version == record.version)
        with translated():
            async with self._engine.begin() as conn:
                inserted = await conn.execute(
                    pg_insert(saga_definitions)
                    .values(
                        name=record.name,
                        version=record.version,
                        fingerprint=record.fingerprint,
                        document=record.document,
                    )
                    .on_conflict_do_nothing()
                    .returning(d.name)
                )
                if inserted.first() is not None:
                    return Registration.NEW
                row = (await conn.execute(sa.select(d.fingerprint, d.document).where(*key))).one()
                if row.fingerprint == record.fingerprint:
                    return Registration.UNCHANGED
                if replace_unused:
                    i = saga_instances.c
                    unfinished = sa.exists().where(
                        i.name == record.name,
                        i.version == record.version,
                        i.status.in_(sorted(s.value for s in UNFINISHED)),
                    )
                    replaced = await conn.execute(
                        sa.update(saga_definitions)
                        .where(*key, ~unfinished)
                        .values(
                            fingerprint=record.fingerprint,
                            document=record.document,
                            registered_at=sa.func.now(),
                        )
                        .returning(d.name)
                    )
                    if replaced.first() is not None:
                        return Registration.REPLACED
        raise DefinitionConflict(
            record.name, record.version, changes(row.document, record.document)
        )

    async def definitions(self) -> list[RegisteredDefinition]:
        d = saga_definitions.c
        with translated():
            async with self._engine.connect() as conn:
                found = await conn.execute(
                    sa.select(d.name, d.version, d.fingerprint, d.registered_at).order_by(
                        d.name, d.version
                    )
                )
                return [RegisteredDefinition(*row) for row in found.all()]

    async def versions_in_use(self) -> list[VersionInUse]:
        i = saga_instances.c
        # IN the unfinished statuses rather than NOT IN the ended ones: the (status,
        # updated_at) index then reads only the few unfinished rows, not every finished saga.
        unfinished = sorted(s.value for s in UNFINISHED)
        parents = saga_instances.alias("parents")
        # A completed child saga whose parent may still undo it needs its version too.
        undoable_child = sa.and_(
            i.status == SagaStatus.COMPLETED.value,
            i.parent_id.in_(sa.select(parents.c.id).where(parents.c.status.in_(unfinished))),
        )
        # UNION ALL, not OR: an OR of the two makes the planner scan every saga (259 ms at a
        # million finished ones, against 0.5 ms). The branches are disjoint by status.
        both = sa.union_all(
            sa.select(i.name, i.version).where(i.status.in_(unfinished)),
            sa.select(i.name, i.version).where(undoable_child),
        ).subquery()
        statement = (
            sa.select(both.c.name, both.c.version, sa.func.count().label("unfinished"))
            .group_by(both.c.name, both.c.version)
            .order_by(both.c.name, both.c.version)
        )
        with translated():
            async with self._engine.connect() as conn:
                found = await conn.execute(statement)
                return [VersionInUse(*row) for row in found.all()]

    async def get(self, saga_id: UUID) -> SagaState | None:
        found = await self._read(sa.select(saga_instances).where(saga_instances.c.id == saga_id))
        return found[0] if found else None

    async def find(self, query: SagaQuery) -> list[SagaState]:
        return await self._read(find_statement(query))

    async def count_by_status(self, saga: str | None = None) -> dict[SagaStatus, int]:
        i = saga_instances.c
        statement = sa.select(i.status, sa.func.count()).group_by(i.status)
        if saga is not None:
            statement = statement.where(i.name == saga)
        with translated():
            async with self._engine.connect() as conn:
                found = {status: n for status, n in (await conn.execute(statement)).all()}
        return {status: found.get(status.value, 0) for status in SagaStatus}

    async def count_active(self) -> int:
        """Sagas running or compensating, read from the status index (admission control)."""
        i = saga_instances.c
        statement = sa.select(sa.func.count()).where(
            i.status.in_([SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value])
        )
        with translated():
            async with self._engine.connect() as conn:
                return int(await conn.scalar(statement) or 0)

    async def history(self, saga_id: UUID) -> list[HistoryRecord]:
        with translated():
            async with self._engine.connect() as conn:
                return (await load_history(conn, [saga_id]))[saga_id]

    async def locks(self) -> LocksView:
        # One snapshot for both lists: a waiter granted meanwhile shows up once, not twice.
        async with self._reader.connect() as conn:
            return await semantic_locks.view(conn)

    async def _read(self, statement: sa.Select[tuple[object, ...]]) -> list[SagaState]:
        with translated():
            async with self._reader.connect() as conn:
                found = await conn.execute(statement)
                return await load_states(conn, found.all())


def find_statement(query: SagaQuery) -> sa.Select[tuple[object, ...]]:
    """The instances `find` reads, newest activity first: the order the (status,
    updated_at) index serves. (bench.growth EXPLAINs it.)"""
    i = saga_instances.c
    return (
        sa.select(saga_instances)
        .where(*_filters(query))
        .order_by(i.updated_at.desc(), i.id.desc())
        .limit(query.limit)
    )


def _filters(query: SagaQuery) -> list[sa.ColumnElement[bool]]:
    i = saga_instances.c
    where: list[sa.ColumnElement[bool]] = []
    if query.status is not None:
        where.append(i.status == query.status.value)
    if query.saga is not None:
        where.append(i.name == query.saga)
    if query.key is not None:
        where.append(i.key == query.key)
    if query.version is not None:
        where.append(i.version == query.version)
    if query.created_after is not None:
        where.append(i.created_at >= query.created_after)
    if query.created_before is not None:
        where.append(i.created_at < query.created_before)
    if query.in_status_for is not None:
        # The database's clock, like the relay's: one clock for every orchestrator replica.
        where.append(i.status_since <= sa.func.now() - query.in_status_for)
    if query.step is not None:
        st = saga_steps.c
        active = st.status.in_([StepStatus.RUNNING.value, StepStatus.COMPENSATING.value])
        parked = sa.and_(st.status == StepStatus.FAILED.value, i.status == SagaStatus.FAILED.value)
        where.append(
            sa.exists().where(st.saga_id == i.id, st.name == query.step, sa.or_(active, parked))
        )
    if query.waiting_for is not None:
        where.append(_waiting(query.waiting_for))
    names = dict.fromkeys(c.name for c in query.where)
    where += [_search([c for c in query.where if c.name == name]) for name in names]
    if query.after is not None:
        updated_at, saga_id = query.after
        where.append(sa.tuple_(i.updated_at, i.id) < sa.tuple_(updated_at, saga_id))
    return where


def _search(conditions: list[SearchCondition]) -> sa.ColumnElement[bool]:
    """The saga has a value of the field (all `conditions` name it), in its kind's column,
    that every condition holds for. One EXISTS per field, answered by the (name, value,
    saga_id) index of its kind: the two bounds of a range (`amount>=100`, `amount<200`) make
    one index range, where an EXISTS each would be two half-open ones, each too wide for the
    planner to start from."""
    x = saga_search.c
    compared = [COMPARE[c.op](x[SEARCH_COLUMNS[c.kind]], c.value) for c in conditions]
    return sa.exists().where(
        x.saga_id == saga_instances.c.id, x.name == conditions[0].name, *compared
    )


def _waiting(waiting: WaitingFor) -> sa.ColumnElement[bool]:
    """The saga's step named as the signal runs with no command, in a definition where that
    step is a wait."""
    if not waiting.definitions:
        return sa.false()
    i, st = saga_instances.c, saga_steps.c
    return sa.and_(
        sa.tuple_(i.name, i.version).in_(sorted(waiting.definitions)),
        sa.exists().where(
            st.saga_id == i.id,
            st.name == waiting.signal,
            st.status == StepStatus.RUNNING.value,
            st.command_id.is_(None),
        ),
    )


async def load_history(
    conn: AsyncConnection, saga_ids: Sequence[UUID]
) -> dict[UUID, list[HistoryRecord]]:
    """The histories of the sagas, each oldest first, in one query (a saga without history
    maps to an empty list)."""
    histories: dict[UUID, list[HistoryRecord]] = {saga_id: [] for saga_id in saga_ids}
    if not saga_ids:
        return histories
    found = await conn.execute(
        sa.select(saga_history)
        .where(any_of(saga_history.c.saga_id, saga_ids))
        .order_by(saga_history.c.saga_id, saga_history.c.seq)
    )
    for row in found:
        histories[row.saga_id].append(
            HistoryRecord(
                saga_id=row.saga_id,
                seq=row.seq,
                at=row.at,
                event=row.event,
                step=row.step,
                detail=row.detail,
                actor=row.actor,
            )
        )
    return histories
