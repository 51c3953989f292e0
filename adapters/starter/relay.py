"""The relay: publishes the outbox's rows to the `sagas` exchange and deletes them once the
broker confirmed them.

One round is one transaction on the service's database:

1. claim up to `batch` rows in id order with `FOR UPDATE SKIP LOCKED`, only the oldest row of
   each key (no earlier row of that key exists): several relays on one table never hold the
   same row, and the rows of one key leave one after the other, in the order written;
2. publish them, routing key = the row's kind, persistent, `application/json`, the row's
   `message_id` and headers, and wait for every confirm;
3. delete the confirmed rows and commit.

A crash between 2 and 3 leaves confirmed rows behind, and the next round publishes them
again under the same message id: the engine starts one saga per key however often its start
arrives, and a cancel applied twice changes nothing the first did not. Rows the broker did
not confirm stay, and the relay backs off (exponentially, capped) before it tries again, as
it does while the database is unreachable.

Idle, the relay waits on LISTEN for the table's trigger (a NOTIFY when a transaction that
wrote rows commits), and polls every `poll_interval` anyway, in case a notification was
missed while its connection was being reopened.

It opens two connections of its own to the service's database (psycopg, one for the rounds,
one for LISTEN) and one to RabbitMQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import psycopg
import structlog
from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg.rows import namedtuple_row
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.faults import FaultyRelayPublisher, fault_hook
from adapters.redaction import redact_text
from adapters.starter.broker import PUBLISH_TIMEOUT, Broker
from adapters.starter.metrics import GAUGE_INTERVAL, RelayMetrics
from adapters.starter.table import OUTBOX, OutboxTable
from orchestrator.errors import PublishFailed
from orchestrator.messages import Exchange, OutboxMessage

log = structlog.get_logger(__name__)

BATCH = 100
POLL_INTERVAL = 5.0
FIRST_BACKOFF = 0.2
MAX_BACKOFF = 30.0
CONNECT_TIMEOUT = 10


class Publisher(Protocol):  # orchestrator.ports.Publisher, which the starter does not load
    async def publish(self, messages: Sequence[OutboxMessage]) -> None: ...


class RelaySetupError(Exception):
    """The relay cannot run on this database as configured; the message says what to do."""


def conninfo(database: AsyncEngine | str) -> str:
    """A libpq URL for psycopg from an engine or an SQLAlchemy-style URL
    (`postgresql+psycopg://...`); the password is kept."""
    url = database.url if isinstance(database, AsyncEngine) else make_url(database)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Relay:
    """Relays one outbox table through `publisher` (a `Broker`, or its fault wrapper) until
    stopped; `relaying` runs one as a background task, `saga relay` as a process."""

    def __init__(
        self,
        database: str,
        publisher: Publisher,
        *,
        table: OutboxTable = OUTBOX,
        batch: int = BATCH,
        poll_interval: float = POLL_INTERVAL,
        max_backoff: float = MAX_BACKOFF,
        metrics: RelayMetrics | None = None,
    ) -> None:
        """`database`: a libpq URL (see `conninfo`)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.database = database
        self.publisher = publisher
        self.table = table
        self.batch = batch
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.metrics = metrics or RelayMetrics()
        t = sql.SQL(table.qualified)
        self._claim = sql.SQL(
            "SELECT o.id, o.kind, o.body::text AS body, o.message_id, o.headers::text AS headers "
            "FROM {t} AS o "
            "WHERE NOT EXISTS (SELECT FROM {t} AS e WHERE e.key = o.key AND e.id < o.id) "
            "ORDER BY o.id LIMIT %(batch)s FOR UPDATE OF o SKIP LOCKED"
        ).format(t=t)
        self._delete = sql.SQL("DELETE FROM {t} WHERE id = ANY(%(ids)s)").format(t=t)
        self._gauges = sql.SQL(
            "SELECT count(*) AS waiting, "
            "coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age FROM {t}"
        ).format(t=t)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._gauges_due = 0.0  # monotonic time of the next gauge reading
        self._gauges_stale = False

    def __repr__(self) -> str:
        return f"Relay({redact_text(self.database)!r}, table={self.table.qualified!r})"

    def stop(self) -> None:
        """Finish the round under way, then leave `run`."""
        self._stopping.set()

    async def run(self) -> None:
        """Relay until `stop()`: a round whenever rows may be waiting, a pause between
        failures that doubles up to `max_backoff`."""
        log.info("starter_relay_started", table=self.table.qualified)
        backoff = FIRST_BACKOFF
        failing = False
        try:
            while not self._stopping.is_set():
                try:
                    relayed = await self.relay_once()
                except Exception as exc:
                    stage, reason = (
                        (exc.stage, exc.reason)
                        if isinstance(exc, _RoundFailed)
                        else ("relay", _describe(exc))
                    )
                    log.warning(
                        "starter_relay_failed",
                        table=self.table.qualified,
                        stage=stage,
                        reason=reason,
                        retry_in=round(backoff, 2),
                        exc_info=not isinstance(exc, _RoundFailed),
                    )
                    failing = True
                    await self._read_gauges()
                    await self._pause(backoff * random.uniform(0.8, 1.2))
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                await self._read_gauges()
                if failing:
                    log.info("starter_relay_recovered", table=self.table.qualified)
                    failing, backoff = False, FIRST_BACKOFF
                if relayed < self.batch:
                    await self._idle()
        finally:
            await self._disconnect()
            log.info("starter_relay_stopped", table=self.table.qualified)

    async def relay_once(self) -> int:
        """One round: claim, publish, delete what was confirmed, commit. Returns the number of
        rows claimed. Raises when the database failed, or when the broker did not confirm
        every row (after committing the deletes of those it did confirm)."""
        try:
            conn = await self._connected()
            async with conn.transaction():
                cursor = await conn.execute(self._claim, {"batch": self.batch})
                rows = await cursor.fetchall()
                if not rows:
                    return 0
                failed = await self._publish(rows)
                done = [r for r in rows if r.message_id not in failed]
                if done:
                    await conn.execute(self._delete, {"ids": [r.id for r in done]})
        except psycopg.Error as exc:
            await self._disconnect()
            self.metrics.database_failures.inc()
            raise _RoundFailed("database", _describe(exc)) from exc
        for row in done:
            self.metrics.published.labels(kind=row.kind).inc()
        if done:
            log.info("starter_rows_relayed", table=self.table.qualified, count=len(done))
        if failed:
            self.metrics.publish_failures.inc(len(failed))
            reasons = sorted(set(failed.values()))
            raise _RoundFailed("broker", f"{len(failed)} of {len(rows)} rows: {reasons[0]}")
        return len(rows)

    async def _publish(self, rows: Sequence[Any]) -> dict[str, str]:
        """Publish the rows; the message ids the broker did not confirm, with the reason."""
        messages = [
            OutboxMessage(
                exchange=Exchange.SAGAS,
                routing_key=r.kind,
                body=r.body.encode(),
                message_id=r.message_id,
                headers=_headers(r.headers),
            )
            for r in rows
        ]
        try:
            await self.publisher.publish(messages)
        except PublishFailed as exc:
            return dict(exc.failures)
        return {}

    async def _read_gauges(self) -> None:
        """After a round: read the gauges from the table, at most every GAUGE_INTERVAL; a
        reading skipped for that is taken when it is due (`_idle` wakes up for it)."""
        now = time.monotonic()
        if now < self._gauges_due:
            self._gauges_stale = True
            return
        conn = self._conn
        if conn is None or conn.closed:
            return  # the next round reconnects, or says why it cannot
        try:
            row = await (await conn.execute(self._gauges)).fetchone()
        except psycopg.Error:
            return  # the same
        assert row is not None
        self.metrics.waiting.set(row.waiting)
        self.metrics.oldest_age.set(row.age)
        self._gauges_due, self._gauges_stale = now + GAUGE_INTERVAL, False

    async def _connected(self) -> psycopg.AsyncConnection[Any]:
        if self._listener is not None and self._listener.done():
            # LISTEN's connection broke: open both again, so no notification goes unheard.
            await self._disconnect()
        if self._conn is None or self._conn.closed:
            await self._disconnect()
            listen = await self._open()
            try:
                await listen.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(self.table.channel))
                )
                conn = await self._open()
            except BaseException:
                await listen.close()
                raise
            self._conn, self._listener = conn, asyncio.create_task(self._listen(listen))
        return self._conn

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.database,
            autocommit=True,
            row_factory=namedtuple_row,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="saga-starter-relay",
        )

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            async for _ in conn.notifies():
                self._wake.set()
        finally:
            self._wake.set()  # its end wakes the loop, which reopens it
            with contextlib.suppress(Exception):
                await conn.close()

    async def _disconnect(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _idle(self) -> None:
        """Until a notification, `poll_interval` (or sooner a gauge reading due), or stop."""
        wait = self.poll_interval
        if self._gauges_stale:
            wait = min(wait, max(0.0, self._gauges_due - time.monotonic()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await _first(self._wake.wait(), self._stopping.wait())
        self._wake.clear()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()


class _RoundFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


async def _first(*waits: Any) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _headers(raw: str | None) -> dict[str, str] | None:
    if raw is None:
        return None
    loaded = json.loads(raw)
    if not isinstance(loaded, dict):
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in loaded.items()}


def _describe(exc: BaseException) -> str:
    return " ".join(redact_text(f"{type(exc).__name__}: {exc}").split())[:500]


async def check_table(database: str, table: OutboxTable = OUTBOX) -> None:
    """Raise RelaySetupError unless the database answers and holds the outbox table."""
    try:
        async with await psycopg.AsyncConnection.connect(
            database, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as conn:
            found = await (
                await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [table.qualified])
            ).fetchone()
    except psycopg.Error as exc:
        raise RelaySetupError(f"cannot use the database: {_describe(exc)}") from None
    if not found or not found[0]:
        raise RelaySetupError(
            f"the database has no table {table.qualified}: create it with "
            "adapters.starter.install(conn) or the DDL in docs/starter.md"
        )


@asynccontextmanager
async def relaying(
    database: AsyncEngine | str,
    *,
    amqp_url: str,
    prefix: str = "",
    table: OutboxTable = OUTBOX,
    registry: CollectorRegistry | None = None,
    batch: int = BATCH,
    poll_interval: float = POLL_INTERVAL,
    max_backoff: float = MAX_BACKOFF,
    publish_timeout: float = PUBLISH_TIMEOUT,
) -> AsyncIterator[Relay]:
    """Run a relay as a background task of this process for the length of the block: on
    `database` (your engine, or its URL), to the broker at `amqp_url` (one node's URL, or
    the nodes of a cluster comma-separated, as SAGA_AMQP_URL takes them) under `prefix` (the
    engine's SAGA_AMQP_PREFIX). On leaving, the round under way finishes and the relay stops;
    rows still waiting are relayed by the next relay to run on the table.

    `SAGA_FAULT` (tests only, adapters/faults.py) arms a crash point around its publishes."""
    hit = fault_hook(os.environ.get("SAGA_FAULT"), "starter")
    broker = Broker(amqp_url, prefix, timeout=publish_timeout)
    publisher: Publisher = broker if hit is None else FaultyRelayPublisher(broker, hit)
    relay = Relay(
        conninfo(database),
        publisher,
        table=table,
        batch=batch,
        poll_interval=poll_interval,
        max_backoff=max_backoff,
        metrics=RelayMetrics(registry),
    )
    task = asyncio.create_task(relay.run(), name=f"starter-relay:{table.qualified}")
    try:
        yield relay
    finally:
        relay.stop()
        try:
            await task
        finally:
            await broker.close()
