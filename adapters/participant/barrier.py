"""The exactly-once barrier a participant keeps in its own PostgreSQL database.

Commands arrive at least once: a redelivery after a crash, an outbox republish, a retry after a
lost reply. Some also arrive out of order: a compensation sent after a timeout can overtake its
action in the queue. The barrier turns that into one effect per (saga, step, kind), in the
style of DTM's sub-transaction barrier: a row keyed by (saga_id, step, kind) -- the parts of
`Command.idempotency_key` -- is written in the same transaction as the handler's business
writes, so the effect and the record that it happened commit together or not at all.

    barrier = Barrier(engine)
    await barrier.install()

    @payments.handler("payments.charge")
    @barrier.guard
    async def charge(command: Command, conn: AsyncConnection) -> dict[str, Any] | None:
        await conn.execute(...)  # business writes, inside the barrier's transaction

What each delivery does:

- action, first delivery: its row is inserted first, then the handler runs. A concurrent
  duplicate blocks on the row's unique index until the first commits (or rolls back), so two
  deliveries never both run the handler.
- action, duplicate: the stored reply is returned again without running the handler -- the
  same result, or the same non-retryable `StepFailed`. Answering the same thing keeps the
  orchestrator's view and the data in agreement.
- action after its compensation ("hanging"): the compensation left the action's row behind,
  marked as written by it. The action is refused with a non-retryable
  `StepFailed("compensated_already")` and never runs: running it now would leave an effect
  that nobody will ever undo.
- compensation before its action ("null compensation"): the compensation first inserts the
  action's row, marked as written by the compensation. If that insert wins, the action never
  ran, so there is nothing to undo: the compensation is recorded and answered as a success
  `{"null_compensation": true}` without running its handler (and the marker refuses the
  action if it comes later). The same holds when the action's stored reply is a failure: its
  writes were rolled back, so there is nothing to undo either.
- compensation after a successful action: its own row is inserted, then its handler runs;
  duplicates get the stored reply like actions do.

A non-retryable `StepFailed` of an action rolls back the business writes but its reply is
stored: evaluated again later, the action could succeed when the saga has already moved on
(compensated without it) and leave an effect nobody undoes. The transaction rolls back whole
and the failure row is written in a second one, which answers whatever row another delivery
wrote in between: cheaper than a savepoint around every handler (two round trips each), as
failures are rare. A compensation's non-retryable failure is not stored: it parks the saga
for an operator, and the operator's retry (same key) must run the compensation again, not
replay the failure. A retryable `StepFailed` or any other exception rolls back everything,
the barrier row included, so the next attempt with the same key runs again.

Keys are (saga_id, step, kind) rather than the idempotency key string because a compensation
must find its action's row.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import pydantic_core
import sqlalchemy as sa
import structlog
from psycopg import sql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.participant.core import CommandHandler, StepFailed
from adapters.postgres import driver
from adapters.postgres.bulk import json_text
from adapters.postgres.tables import NAMING_CONVENTION
from orchestrator.messages import Command

log = structlog.get_logger(__name__)

GuardedHandler = Callable[[Command, AsyncConnection], Awaitable[dict[str, Any] | None]]
Kind = Literal["action", "compensation"]

NULL_COMPENSATION = "null_compensation"
COMPENSATED_ALREADY = "compensated_already"


def barrier_table(name: str = "saga_barrier", schema: str | None = None) -> sa.Table:
    """The barrier's table, on a MetaData of its own (include it in your Alembic metadata to
    manage it with your migrations instead of `Barrier.install`)."""
    return sa.Table(
        name,
        sa.MetaData(schema=schema, naming_convention=NAMING_CONVENTION),
        sa.Column("saga_id", sa.Uuid, primary_key=True),
        sa.Column("step", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, primary_key=True),
        # An action row written by a compensation is the marker "undone before it was done".
        sa.Column("written_by", sa.Text, nullable=False),
        sa.Column("command_id", sa.Uuid, nullable=False),
        # NULL only for that marker. A command's own row says success from its claim on,
        # which only its own transaction sees until the handler has succeeded.
        sa.Column("outcome", sa.Text),
        sa.Column("result", JSONB(none_as_null=True)),
        sa.Column("error", JSONB(none_as_null=True)),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
            index=True,
        ),
        sa.CheckConstraint("kind IN ('action', 'compensation')", name="kind"),
        sa.CheckConstraint("outcome IN ('success', 'failure')", name="outcome"),
        # A command writes its own row, and a compensation writes its action's row only as the
        # marker: an action can never write a compensation's row or a marker.
        sa.CheckConstraint(
            "written_by = kind OR (kind = 'action' AND outcome IS NULL)", name="written_by"
        ),
    )


@dataclass(frozen=True)
class _Stored:
    written_by: str
    outcome: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None


@dataclass(frozen=True)
class _Outcome:
    """A reply decided inside the transaction, given to the caller only after it committed."""

    result: dict[str, Any] | None = None
    failure: StepFailed | None = None

    def unwrap(self) -> dict[str, Any] | None:
        if self.failure is not None:
            raise self.failure
        return self.result


class Barrier:
    """Exactly-once effects for a participant's handlers; see the module docstring."""

    def __init__(
        self, engine: AsyncEngine, *, table: str = "saga_barrier", schema: str | None = None
    ) -> None:
        self._engine = engine
        self.table = barrier_table(table, schema)
        t = self.table
        # Built once: constructing a statement per command cost more CPU than running it.
        key = (
            t.c.saga_id == sa.bindparam("k_saga_id"),
            t.c.step == sa.bindparam("k_step"),
            t.c.kind == sa.bindparam("k_kind"),
        )
        # The two statements of every command, as psycopg text (adapters/postgres/driver.py).
        name = sql.Identifier(*([t.schema] if t.schema else []), t.name).as_string()
        self._insert = (
            f"INSERT INTO {name} ({', '.join(_CLAIMED)})"
            " VALUES (%(saga_id)s, %(step)s, %(kind)s, %(written_by)s, %(command_id)s,"
            " %(outcome)s, CAST(%(error)s AS jsonb))"
            " ON CONFLICT DO NOTHING RETURNING kind"
        )
        self._update = (
            f"UPDATE {name} SET result = CAST(%(v_result)s AS jsonb)"
            " WHERE saga_id = %(k_saga_id)s AND step = %(k_step)s AND kind = %(k_kind)s"
        )
        self._select = sa.select(t.c.written_by, t.c.outcome, t.c.result, t.c.error).where(*key)

    def __repr__(self) -> str:
        return f"Barrier({self.table.fullname!r})"

    async def install(self) -> None:
        """Create the schema and table unless they exist. Idempotent, and safe when several
        processes start at once."""
        async with self._engine.begin() as conn:
            # CREATE ... IF NOT EXISTS is not safe against a concurrent creator: both pass the
            # check and one fails on the catalog's unique index. The lock makes the second wait,
            # then find everything in place; one lock for all barriers, as they may share a schema.
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
                {"name": "adapters.participant.barrier.install"},
            )
            if self.table.schema is not None:
                await conn.execute(sa.schema.CreateSchema(self.table.schema, if_not_exists=True))
            await conn.run_sync(self.table.metadata.create_all)

    def guard(self, fn: GuardedHandler) -> CommandHandler:
        """Wrap `async def fn(command, conn)` into a handler for `Participant.handler`: `fn`
        does its business writes through `conn`, inside the barrier's transaction."""

        @functools.wraps(fn)
        async def guarded(command: Command) -> dict[str, Any] | None:
            if command.kind == "action":
                return await self._action(command, fn)
            return await self._compensation(command, fn)

        guarded.answered = self.answered  # type: ignore[attr-defined]
        return guarded

    async def answered(self, command: Command) -> bool:
        """Whether the barrier holds an answer for the command's step and kind (another
        delivery or attempt settled it): the handler would replay it without acting, so even
        an expired command may be answered with it (the participant does: see `expired`)."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(self._select, _key(command, command.kind))).first()
        return row is not None

    async def prune(self, older_than: timedelta, batch: int = 10_000) -> int:
        """Delete rows written more than `older_than` ago, `batch` rows per transaction (short
        transactions: no long lock, no pinned xmin); returns how many were deleted.

        A pruned row forgets its command: a duplicate delivered afterwards runs the handler
        again, and a hanging action is no longer refused. So prune only rows older than the
        longest time any command of a saga can still be delivered -- the saga's deadline plus
        its retries, the broker's and the outbox's backlog after an outage, and the time a
        parked saga may wait for an operator's retry. Think weeks, not minutes.
        """
        if older_than <= timedelta(0) or batch < 1:
            raise ValueError(
                f"prune needs older_than > 0 and batch >= 1, got {older_than}, {batch}"
            )
        t = self.table
        async with self._engine.connect() as conn:
            # One cutoff on the database's clock, the one that wrote created_at.
            cutoff = await conn.scalar(sa.select(sa.func.now() - older_than))
        doomed = (
            sa.select(t.c.saga_id, t.c.step, t.c.kind)
            .where(t.c.created_at < cutoff)
            .limit(batch)
            .with_for_update(skip_locked=True)  # two pruners share the work, never wait
        )
        total = 0
        while True:
            async with self._engine.begin() as conn:
                deleted = await conn.execute(
                    sa.delete(t).where(sa.tuple_(t.c.saga_id, t.c.step, t.c.kind).in_(doomed))
                )
            total += deleted.rowcount
            if deleted.rowcount < batch:
                log.info("barrier_pruned", table=t.fullname, deleted=total)
                return total

    # -- the two paths --------------------------------------------------------------------------

    async def _action(self, command: Command, fn: GuardedHandler) -> dict[str, Any] | None:
        try:
            async with self._engine.begin() as conn:
                if await self._claim(conn, command, "action", "success"):
                    result = await _apply(fn, command, conn)
                    if result is not None:
                        await self._store(conn, command, result)
                    return result
                outcome = await self._answered(conn, command)
        except StepFailed as failure:
            if failure.retryable:
                raise  # rolls back the barrier row too: the next attempt runs again
            # Rolled back with its business writes; stored now in a transaction of its own
            # (a savepoint around the handler would cost two round trips on every command).
            error = {"type": failure.type, "message": failure.message, "retryable": False}
            async with self._engine.begin() as conn:
                if await self._claim(conn, command, "action", "failure", error=error):
                    outcome = _Outcome(failure=failure)
                    _log(command).info("barrier_failure_stored", error_type=failure.type)
                else:  # another delivery, or the compensation's marker, got there in between
                    outcome = await self._answered(conn, command)
        return outcome.unwrap()  # after commit: raising inside would roll the row back

    async def _answered(self, conn: AsyncConnection, command: Command) -> _Outcome:
        """What an action whose row exists already comes to: refused after its compensation,
        else the stored reply again."""
        row = await self._row(conn, command, "action")
        if row.written_by == "compensation":
            _log(command).warning("barrier_hanging_action_refused")
            return _Outcome(
                failure=StepFailed(
                    COMPENSATED_ALREADY,
                    "the compensation of this step was recorded before the action "
                    "arrived; the action is refused so that no effect outlives its undo",
                    retryable=False,
                )
            )
        return _replayed(command, row)

    async def _compensation(self, command: Command, fn: GuardedHandler) -> dict[str, Any] | None:
        async with self._engine.begin() as conn:
            # The marker first: if it wins, the action never ran, and it refuses the action
            # later. If the action is in flight, this waits for it to commit or roll back.
            action_missing = await self._claim(conn, command, "action")
            if not await self._claim(conn, command, "compensation", "success"):
                outcome = _replayed(command, await self._row(conn, command, "compensation"))
            elif action_missing or not await self._action_applied(conn, command):
                _log(command).info("barrier_null_compensation", action_missing=action_missing)
                null: dict[str, Any] = {NULL_COMPENSATION: True}
                await self._store(conn, command, null)
                outcome = _Outcome(result=null)
            else:
                # Any failure rolls everything back, the barrier rows included: a
                # compensation's failure is never stored (see the module docstring).
                result = await _apply(fn, command, conn)
                if result is not None:
                    await self._store(conn, command, result)
                outcome = _Outcome(result=result)
        return outcome.unwrap()

    # -- steps ------------------------------------------------------------------------------------

    async def _claim(
        self,
        conn: AsyncConnection,
        command: Command,
        kind: Kind,
        outcome: Literal["success", "failure"] | None = None,
        *,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Insert the row of (command's saga and step, `kind`), with its outcome; False when
        it exists. A concurrent insert of the same row blocks this one until that transaction
        ends. A command claims its own row as a success before its handler runs: if the
        handler fails, the row rolls back with it, and if it succeeds with no result there
        is nothing left to write (one round trip fewer per command)."""
        params = {
            "saga_id": command.saga_id,
            "step": command.step,
            "kind": kind,
            "written_by": command.kind,
            "command_id": command.command_id,
            "outcome": outcome,
            "error": json_text(error),
        }
        return bool(await driver.fetch(conn, self._insert, params))

    async def _row(self, conn: AsyncConnection, command: Command, kind: Kind) -> _Stored:
        # A separate statement, not part of the insert: only a new snapshot (READ COMMITTED)
        # sees the row of the transaction the insert waited for.
        row = (await conn.execute(self._select, _key(command, kind))).first()
        if row is None:
            raise RuntimeError(
                f"barrier row {command.saga_id}:{command.step}:{kind} vanished between insert "
                "and read (pruned meanwhile?); the next attempt will retry"
            )
        return _Stored(row.written_by, row.outcome, row.result, row.error)

    async def _action_applied(self, conn: AsyncConnection, command: Command) -> bool:
        row = await self._row(conn, command, "action")
        return row.written_by == "action" and row.outcome == "success"

    async def _store(self, conn: AsyncConnection, command: Command, result: dict[str, Any]) -> None:
        """The result of the command whose row this transaction claimed as a success."""
        params = {**_key(command, command.kind), "v_result": json_text(result)}
        await driver.fetch(conn, self._update, params)


_CLAIMED = ("saga_id", "step", "kind", "written_by", "command_id", "outcome", "error")


def _key(command: Command, kind: Kind) -> dict[str, Any]:
    return {"k_saga_id": command.saga_id, "k_step": command.step, "k_kind": kind}


def _replayed(command: Command, row: _Stored) -> _Outcome:
    _log(command).info("barrier_duplicate_replayed", outcome=row.outcome)
    if row.outcome == "success":
        return _Outcome(result=row.result)
    if row.outcome == "failure":
        err = row.error or {}
        return _Outcome(
            failure=StepFailed(err.get("type", "error"), err.get("message", ""), retryable=False)
        )
    # Committed rows of the command's own kind always have an outcome; this is a broken table.
    raise RuntimeError(
        f"barrier row {command.saga_id}:{command.step}:{command.kind} has no outcome"
    )


async def _apply(
    fn: GuardedHandler, command: Command, conn: AsyncConnection
) -> dict[str, Any] | None:
    return _as_json(await fn(command, conn))


def _as_json(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The result as plain JSON (Decimal, UUID, datetime become strings, as on the wire), so
    the first reply and every replay are the same. Called inside the transaction: a result
    that cannot be stored rolls back its effect."""
    try:
        plain: dict[str, Any] | None = pydantic_core.from_json(pydantic_core.to_json(result))
    except Exception as exc:
        raise StepFailed(
            "invalid_result",
            f"the handler's result cannot be stored and sent as JSON: {exc}",
            retryable=False,
        ) from exc
    return plain


def _log(command: Command) -> Any:
    return log.bind(
        saga_id=str(command.saga_id),
        step=command.step,
        kind=command.kind,
        attempt=command.attempt,
        command_id=str(command.command_id),
    )
