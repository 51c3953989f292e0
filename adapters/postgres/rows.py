"""Conversions between table rows and the core's state values."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.postgres.tables import saga_steps
from orchestrator.messages import OutboxMessage, ParentRef
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus


def instance_values(state: SagaState) -> dict[str, Any]:
    return {
        "id": state.saga_id,
        "name": state.name,
        "version": state.version,
        "key": state.key,
        "input": state.input,
        "created_at": state.created_at,
        "trace": state.trace,
        **progress_values(state),
    }


PROGRESS_COLUMNS = (
    "status",
    "cancel_reason",
    "error",
    "revision",
    "next_due_at",
    "updated_at",
    "deadline_at",
    "compensation_deadline_at",
    "resume_status",
    "parent_id",
    "parent",
    "status_since",
    "output",
)


def progress_values(state: SagaState) -> dict[str, Any]:
    """The instance columns a transition may change."""
    return {
        "status": state.status.value,
        "cancel_reason": state.cancel_reason,
        "error": state.error,
        "revision": state.revision,
        "next_due_at": state.next_due_at,
        "updated_at": state.updated_at,
        "deadline_at": state.deadline_at,
        "compensation_deadline_at": state.compensation_deadline_at,
        "resume_status": None if state.resume_status is None else state.resume_status.value,
        "parent_id": None if state.parent is None else state.parent.saga_id,
        "parent": None if state.parent is None else state.parent.model_dump(mode="json"),
        "status_since": state.status_since,
        "output": state.output,
    }


def step_values(step: StepState) -> dict[str, Any]:
    return {
        "idx": step.index,
        "name": step.name,
        "status": step.status.value,
        "attempt": step.attempt,
        "compensation_attempt": step.compensation_attempt,
        "command_id": step.command_id,
        "due_at": step.due_at,
        "result": step.result,
        "error": step.error,
        "started_at": step.started_at,
        "dispatched_at": step.dispatched_at,
        "progress": step.progress,
        "retry_base": step.retry_base,
        "item": step.item,
        "payload": step.payload,
        "close_at": step.close_at,
    }


def any_of(column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """`column = ANY(:array)`: one statement text whatever the count, so psycopg can
    prepare it once (an expanded IN list is a new statement per length)."""
    array = sa.bindparam(None, list(values), type_=ARRAY(column.type))
    return column == sa.any_(array)


async def load_states(conn: AsyncConnection, rows: Sequence[sa.Row[Any]]) -> list[SagaState]:
    """Complete instance rows with their steps, read in one query.

    Read in a statement of its own, after the instances were locked: under READ COMMITTED it
    then sees whatever the previous lock holder committed. A join in the locking statement
    would re-check the instance row after waiting but return steps from before the wait.
    """
    if not rows:
        return []
    ids = [row.id for row in rows]
    found = await conn.execute(
        sa.select(saga_steps)
        .where(any_of(saga_steps.c.saga_id, ids))
        .order_by(saga_steps.c.saga_id, saga_steps.c.idx)
    )
    return states_of(rows, found)


def states_of(rows: Sequence[Any], step_rows: Iterable[Any]) -> list[SagaState]:
    """Instance rows and all their step rows (any order of sagas, steps of one saga in idx
    order) as states. Rows are anything with the columns as attributes: SQLAlchemy's or
    psycopg's named tuples."""
    steps: defaultdict[UUID, list[StepState]] = defaultdict(list)
    for step in step_rows:
        steps[step.saga_id].append(_step(step))
    return [_state(row, tuple(steps[row.id])) for row in rows]


def outbox_message(row: sa.Row[Any]) -> OutboxMessage:
    return OutboxMessage(
        exchange=row.exchange,
        routing_key=row.routing_key,
        body=bytes(row.body),
        message_id=row.message_id,
        reply_to=row.reply_to,
        id=row.id,
        headers=row.headers,
    )


def _state(row: Any, steps: tuple[StepState, ...]) -> SagaState:
    return SagaState(
        saga_id=row.id,
        name=row.name,
        version=row.version,
        key=row.key,
        status=SagaStatus(row.status),
        input=row.input,
        steps=steps,
        created_at=row.created_at,
        updated_at=row.updated_at,
        cancel_reason=row.cancel_reason,
        error=row.error,
        revision=row.revision,
        deadline_at=row.deadline_at,
        compensation_deadline_at=row.compensation_deadline_at,
        resume_status=None if row.resume_status is None else SagaStatus(row.resume_status),
        parent=None if row.parent is None else ParentRef.model_validate(row.parent),
        status_since=row.status_since,
        trace=row.trace,
        output=row.output,
    )


def _step(row: Any) -> StepState:
    return StepState(
        name=row.name,
        index=row.idx,
        status=StepStatus(row.status),
        attempt=row.attempt,
        compensation_attempt=row.compensation_attempt,
        command_id=row.command_id,
        due_at=row.due_at,
        result=row.result,
        error=row.error,
        started_at=row.started_at,
        dispatched_at=row.dispatched_at,
        progress=row.progress,
        retry_base=row.retry_base,
        item=row.item,
        payload=row.payload,
        close_at=row.close_at,
    )
