"""What the database knows that a metrics scrape reports: read in one statement, cheaply.

Each part reads an index, not the tables: the unfinished sagas through the status index
(finished ones are never counted: that would scan every saga ever run; their rate is the
`saga_transitions_total` counter), the outbox's oldest row through its created_at index,
due timers through the partial next_due_at index. The outbox and the semantic-lock tables
are small by design (rows leave them within seconds, or when a saga ends).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.postgres.errors import translated
from adapters.postgres.rows import any_of
from adapters.postgres.tables import outbox, saga_instances, saga_lock_waiters, saga_locks
from orchestrator.state import SagaStatus

# The statuses counted per saga: those a saga is still in, or parked in (failed).
LIVE_STATUSES = (
    SagaStatus.RUNNING,
    SagaStatus.COMPENSATING,
    SagaStatus.PAUSED,
    SagaStatus.FAILED,
)
_ACTIVE = (SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value)


@dataclass(frozen=True)
class DatabaseGauges:
    """One reading. Ages are in seconds on the database's clock, 0 when nothing is waiting."""

    sagas: dict[tuple[str, str], int] = field(default_factory=dict)  # (saga, status) -> count
    outbox_messages: int = 0
    outbox_lag_seconds: float = 0.0
    timers_due: int = 0
    oldest_active_saga_seconds: float = 0.0
    locks_held: int = 0
    lock_waiters: int = 0


def _age(oldest: sa.ColumnElement[Any]) -> sa.ColumnElement[float]:
    seconds = sa.func.extract("epoch", sa.func.now() - oldest)
    return sa.cast(sa.func.coalesce(seconds, 0), sa.Float)


def _count(table: sa.Table) -> sa.Select[Any]:
    return sa.select(sa.func.count()).select_from(table)


def _scalar(metric: str, query: sa.Select[Any]) -> sa.Select[Any]:
    """A row of the reading: the metric's name and the one value `query` selects."""
    return sa.select(
        sa.literal(metric).label("metric"),
        sa.null().label("saga"),
        sa.null().label("status"),
        sa.cast(query.scalar_subquery(), sa.Float).label("value"),
    )


def _statement() -> sa.CompoundSelect[Any]:
    i, o = saga_instances.c, outbox.c
    by_saga = (
        sa.select(
            sa.literal("sagas").label("metric"),
            i.name.label("saga"),
            i.status.label("status"),
            sa.cast(sa.func.count(), sa.Float).label("value"),
        )
        .where(any_of(i.status, [s.value for s in LIVE_STATUSES]))
        .group_by(i.name, i.status)
    )
    return sa.union_all(
        by_saga,
        _scalar("outbox_messages", _count(outbox)),
        _scalar("outbox_lag_seconds", sa.select(_age(sa.func.min(o.created_at)))),
        _scalar("timers_due", _count(saga_instances).where(i.next_due_at <= sa.func.now())),
        _scalar(
            "oldest_active_saga_seconds",
            sa.select(_age(sa.func.min(i.created_at))).where(any_of(i.status, _ACTIVE)),
        ),
        _scalar("locks_held", _count(saga_locks)),
        _scalar("lock_waiters", _count(saga_lock_waiters)),
    )


_STATEMENT = _statement()


async def read(engine: AsyncEngine) -> DatabaseGauges:
    """One round trip; raises (translated) when the database cannot answer."""
    with translated():
        async with engine.connect() as conn:
            rows = (await conn.execute(_STATEMENT)).all()
    sagas: dict[tuple[str, str], int] = {}
    scalars: dict[str, float] = {}
    for row in rows:
        if row.metric == "sagas":
            sagas[(row.saga, row.status)] = int(row.value)
        else:
            scalars[row.metric] = float(row.value or 0.0)
    return DatabaseGauges(
        sagas=sagas,
        outbox_messages=int(scalars.get("outbox_messages", 0)),
        outbox_lag_seconds=max(0.0, scalars.get("outbox_lag_seconds", 0.0)),
        timers_due=int(scalars.get("timers_due", 0)),
        oldest_active_saga_seconds=max(0.0, scalars.get("oldest_active_saga_seconds", 0.0)),
        locks_held=int(scalars.get("locks_held", 0)),
        lock_waiters=int(scalars.get("lock_waiters", 0)),
    )
