"""Composition root of `saga run`: wires Postgres, RabbitMQ and the engine, and runs the
consumers, the timer sweep and the outbox relay until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from adapters import metrics
from adapters.admission import Admission
from adapters.archive import DirectoryArchive
from adapters.faults import FaultyPublisher, crash_after, fault_hook
from adapters.postgres.database import make_engine
from adapters.postgres.dbclock import DatabaseClock, database_session
from adapters.postgres.retention import SWEEP_INTERVAL, retention_sweep
from adapters.postgres.retries import with_db_retries
from adapters.postgres.schema import SchemaNotReady, require_schema
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.blocking import BlockedWatch
from adapters.rabbitmq.command_queues import CommandQueueWatch
from adapters.rabbitmq.connection import connect, open_channel
from adapters.rabbitmq.consumer import BatchHandler, Consumer, Handler, consume
from adapters.rabbitmq.delivery import MAX_REASON_CHARS, Delivery, json_object, parse, printable
from adapters.rabbitmq.publisher import RabbitPublisher
from adapters.rabbitmq.topology import CANCELS_QUEUE, REQUESTS_QUEUE, Topology
from adapters.settings import Settings
from adapters.startup import patiently
from adapters.tracing.wiring import engine_spans
from orchestrator import trace
from orchestrator.definition_rules import NAME_RE
from orchestrator.engine import Engine
from orchestrator.error_info import ErrorInfo
from orchestrator.errors import (
    DefinitionConflict,
    InvalidInput,
    MissingDefinition,
    Poison,
    SagaNotFound,
    UnknownSaga,
)
from orchestrator.messages import (
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    REPLY_QUEUE,
    CancelSaga,
    Reply,
    SignalSaga,
    StartSaga,
)
from orchestrator.ports import Publisher, Registration
from orchestrator.registry import Registry, load_modules
from orchestrator.starting import start_error
from orchestrator.versioning import require_loaded

if TYPE_CHECKING:
    from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
    from sqlalchemy.ext.asyncio import AsyncEngine

    from adapters.http.serve import HttpServer
    from adapters.tracing.saga_spans import SagaSpans

log = structlog.get_logger(__name__)
# The longest wait between two tries of a sweep that keeps failing.
SWEEP_BACKOFF_CAP = 5.0


async def register_definitions(
    store: PostgresStore, registry: Registry, *, redefine: bool = False
) -> None:
    """Record every loaded definition. A changed definition under a known version stops
    start-up, saying what changed; with `redefine` (SAGA_DEV_REDEFINE, development
    databases) it replaces the registered one if no unfinished instance runs on it."""
    for record in registry.records():
        done = await store.register(record, replace_unused=redefine)
        if done == Registration.UNCHANGED:
            continue
        fields = {
            "saga": record.name,
            "version": record.version,
            "fingerprint": record.fingerprint[:12],
        }
        if done == Registration.NEW:
            log.info("definition_registered", **fields)
        else:  # the old definition of this version is gone: say so loudly
            log.warning("definition_replaced", **fields)


class Orchestrator:
    """`saga run`. Stateless: run as many as you like on one database and broker."""

    def __init__(
        self, settings: Settings, registry: Registry | None = None, spans: SagaSpans | None = None
    ) -> None:
        """`spans`: the engine's spans hook (tests); by default what the `OTEL_*` variables
        configure at start, if anything."""
        self.settings = settings
        self.spans = spans
        self.registry = registry or load_modules(settings.modules)
        self.topology = Topology(settings.amqp_prefix)
        # Which command queues have no consumer: logged, counted, told to /readyz and to the
        # timeouts of the commands concerned.
        self.command_queues = CommandQueueWatch(
            self.registry, self.topology, metrics.command_queue_consumers
        )
        # Crash points for tests (SAGA_FAULT): wrappers around the publisher and the handlers.
        self.faults = fault_hook(settings.fault)
        self._tasks: list[asyncio.Task[None]] = []
        self._stops: list[Callable[[], Awaitable[Any]]] = []
        self._stopping = asyncio.Event()
        self.engine: Engine | None = None
        self.http: HttpServer | None = None  # serving SAGA_HTTP_BIND, once started
        self.admission: Admission | None = None
        self.blocking: BlockedWatch | None = None  # of the broker connection, once connected

    async def start(self) -> None:
        from adapters.http.serve import http_plan, listen

        s = self.settings
        # Before connecting to anything: an API open to the network without tokens, a bad
        # bind or a taken port stops start-up at once.
        bind = http_plan(s)
        # An archive directory it cannot write stops start-up too (ArchiveUnusable).
        archive = (
            None
            if s.retention_archive is None
            else DirectoryArchive(s.retention_archive, self.registry)
        )
        sock = None if bind is None else listen(bind)
        db = make_engine(s.database_url, pool_size=s.db_pool_size)
        self._stops.append(db.dispose)
        store = PostgresStore(db)
        try:
            clock = await patiently(
                "PostgreSQL", lambda: self._prepare(db, store), patience=s.startup_patience
            )
        except (DefinitionConflict, MissingDefinition, SchemaNotReady):
            await db.dispose()
            if sock is not None:
                sock.close()
            raise
        connection = await patiently(
            "RabbitMQ", lambda: connect(s.amqp_url), patience=s.startup_patience
        )
        self._stops.append(connection.close)
        # Told when a resource alarm blocks the connection's publishing: /readyz, metrics.
        self.blocking = BlockedWatch(connection)
        self._stops.append(_closing(self.blocking))
        metrics.AMQP_BLOCKED.watch(self.blocking)

        # A connection reset meanwhile (the broker restarting) fails a step; the connection
        # comes back by itself, so each step is tried again while the broker is away.
        def down() -> bool:
            return not connection.connected.is_set()

        publish_channel = await patiently(
            "RabbitMQ", lambda: self._declare(connection), patience=s.startup_patience, down=down
        )
        publisher: Publisher = RabbitPublisher(publish_channel, self.topology)
        if self.faults is not None:
            publisher = FaultyPublisher(publisher, self.faults)
        self.engine = Engine(
            store,
            publisher,
            self.registry,
            clock=clock,
            observe=metrics.observe,
            unconsumed=self.command_queues.unconsumed_commands,
            spans=self._engine_spans(),
        )
        # On stop, once the consumers have stopped and before the database goes: the rows
        # published since the last relay sweep, left behind, would be sent again.
        self._stops.insert(0, self.engine.forget_published)
        admission = Admission(store.count_active, s.max_active or None, stopping=self._stopping)
        metrics.STARTS_HELD.set_function(lambda: admission.held)
        self.admission = admission
        consumers = self._consumers()
        started: list[Consumer] = []

        async def stop_consumers() -> None:
            # Together: with the broker gone, each waits CANCEL_TIMEOUT for its cancel.
            await asyncio.gather(*(consumer.stop() for consumer in started))

        self._stops.insert(0, stop_consumers)
        for queue, handler, batch in consumers:

            async def consuming(
                queue: str = queue, handler: Handler = handler, batch: BatchHandler | None = batch
            ) -> Consumer:
                return await consume(
                    await open_channel(connection),
                    queue,
                    handler,
                    topology=self.topology,
                    prefetch=s.prefetch,
                    on_dead_letter=metrics.dead_lettered,
                    batch=batch,
                    max_batch=s.batch_size,
                    max_body_bytes=s.max_message_bytes,
                )

            started.append(
                await patiently("RabbitMQ", consuming, patience=s.startup_patience, down=down)
            )
        self._tasks = [
            asyncio.create_task(self._loop("timers", self._timers, s.timer_interval)),
            asyncio.create_task(self._loop("relay", self._relay, s.relay_interval)),
            asyncio.create_task(self._watch_command_queues(connection)),
            asyncio.create_task(clock.keep(self._stopping)),
        ]
        self._tasks += self._optional_sweeps(db, archive, clock)
        if sock is not None:
            from adapters.http.app import create_app
            from adapters.http.serve import serve

            app = create_app(
                s,
                store,
                self.engine,
                unconsumed_queues=self.command_queues.unconsumed_queues,
                amqp_blocked=lambda: self.blocking.alarm if self.blocking is not None else None,
                clock_skew=clock.skewed,
            )
            self.http = await serve(app, sock)
            self._stops.insert(0, self.http.stop)
        log.info("orchestrator_started", sagas=self.registry.names(), prefix=s.amqp_prefix or None)

    async def _prepare(self, db: AsyncEngine, store: PostgresStore) -> DatabaseClock:
        """Check the database is ready for this release and these definitions, and take its
        clock: every deadline this process sets and every timer it fires goes by the
        database's clock, one for every replica whatever their hosts' clocks say."""
        await require_schema(db)  # un-migrated, or a release behind: `saga migrate`
        await register_definitions(store, self.registry, redefine=self.settings.dev_redefine)
        # Unfinished instances finish on their own version: refuse to run without it.
        require_loaded(await store.versions_in_use(), self.registry)
        clock = DatabaseClock(database_session(db), max_skew=self.settings.clock_skew_max)
        await clock.sync()
        metrics.CLOCK_OFFSET.set_function(lambda: clock.offset)
        return clock

    def _optional_sweeps(
        self, db: AsyncEngine, archive: DirectoryArchive | None, clock: DatabaseClock
    ) -> list[asyncio.Task[None]]:
        """The sweeps only some deployments need: semantic locks, retention."""
        s, tasks = self.settings, []
        if any(saga.locks for saga in self.registry.all()):
            # Expires waiting starts on time, and starts those a release left behind.
            tasks.append(asyncio.create_task(self._loop("locks", self._locks, s.timer_interval)))
        if s.retention is not None:
            sweep = retention_sweep(db, s.retention, archive=archive, clock=clock)
            tasks.append(asyncio.create_task(self._loop("retention", sweep, SWEEP_INTERVAL)))
        return tasks

    def _engine_spans(self) -> SagaSpans | None:
        """The spans hook given, or the one the OTEL_* variables configure (misconfigured:
        TracingMisconfigured says what to change). Shut down on stop, after the consumers,
        so what the last transitions ended is exported too."""
        if self.spans is None:
            self.spans = engine_spans(os.environ)
        if (spans := self.spans) is not None:
            self._stops.append(lambda: asyncio.to_thread(spans.shutdown))
        return spans

    async def _declare(self, connection: AbstractRobustConnection) -> AbstractRobustChannel:
        """The channel the engine publishes on, once every exchange and queue is declared."""
        channel = await open_channel(connection)
        await self.topology.declare_core(channel)
        for service in self.topology.services_of(self.registry.commands()):
            await self.topology.declare_service(channel, service)
        return channel

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for stop in self._stops:
            with contextlib.suppress(Exception):
                await stop()
        self._stops.clear()
        log.info("orchestrator_stopped")

    async def __aenter__(self) -> Orchestrator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- message handlers: commit inside, ack after return (consumer.py) ------------------
    # What they bind with `bind_contextvars` names every later log line of the message, the
    # consumer's own included, until it is settled.

    def _consumers(self) -> list[tuple[str, Handler, BatchHandler | None]]:
        """Each queue the orchestrator consumes, its handler, and its group-commit handler."""
        batched = self.settings.batch_size > 1
        consumers: list[tuple[str, Handler, BatchHandler | None]] = [
            (REQUESTS_QUEUE, self._on_request, self._on_requests if batched else None),
            # Cancels one by one: they are rare, and never wait for admission.
            (CANCELS_QUEUE, self._on_request, None),
            (REPLY_QUEUE, self._on_reply, self._on_replies if batched else None),
        ]
        hit = self.faults
        if hit is None:
            return consumers
        return [
            (queue, crash_after(one, hit), None if many is None else crash_after(many, hit))
            for queue, one, many in consumers
        ]

    async def _on_request(self, message: Delivery) -> None:
        engine = self._engine()
        if message.routing_key == "start":
            start = await self._parse_start(message)
            structlog.contextvars.bind_contextvars(saga=start.saga, key=start.key)
            context = trace.from_headers(message.headers)
            await self._admit(1)
            try:
                await with_db_retries(lambda: engine.start(start, trace=context))
            except (UnknownSaga, InvalidInput) as exc:
                await self._announce_rejected(message, start.saga, start.key, start_error(exc))
                raise Poison(str(exc)) from exc
        elif message.routing_key == "cancel":
            cancel = parse(CancelSaga, message)
            target = {"saga_id": cancel.saga_id, "saga": cancel.saga, "key": cancel.key}
            structlog.contextvars.bind_contextvars(
                **{name: str(value) for name, value in target.items() if value is not None}
            )
            try:
                await with_db_retries(lambda: engine.cancel(cancel))
            except SagaNotFound as exc:
                raise Poison(str(exc)) from exc
        elif message.routing_key == "signal":
            await self._on_signal(message)
        else:
            raise Poison(
                f"unknown routing key {message.routing_key!r}: expected 'start', 'cancel' or "
                "'signal'"
            )

    async def _on_signal(self, message: Delivery) -> None:
        """A signal: taken, held, a duplicate, or refused (recorded and announced as
        `<saga>.signal_refused`); each is acked. A body that is no valid signal is
        dead-lettered with the reason."""
        request = parse(SignalSaga, message)
        target = {"saga_id": request.saga_id, "saga": request.saga, "key": request.key}
        structlog.contextvars.bind_contextvars(
            signal=request.signal,
            signal_id=request.signal_id,
            **{name: str(value) for name, value in target.items() if value is not None},
        )
        engine = self._engine()
        outcome = await with_db_retries(lambda: engine.signal(request))
        log.info("signal_delivered", result=outcome.result, reason=outcome.reason)

    async def _parse_start(self, message: Delivery) -> StartSaga:
        """The start in `message`, or Poison. A JSON object that is no valid start is
        announced first; a body that is no JSON object (or one over the size limit, or
        unstorable) names no one to tell, and is only dead-lettered."""
        try:
            return parse(StartSaga, message)
        except Poison as exc:
            body = json_object(message)
            if body is not None:
                error = ErrorInfo(
                    type="invalid_start", message=printable(str(exc))[:MAX_REASON_CHARS]
                )
                await self._announce_rejected(message, body.get("saga"), body.get("key"), error)
            raise

    async def _announce_rejected(
        self, message: Delivery, saga: object, key: object, error: ErrorInfo
    ) -> None:
        """Tell the sender of a start that will be dead-lettered why, on `saga.events`
        (`<saga>.rejected`): the name only if it is a valid saga name (it becomes part of the
        routing key), the key only if it is a valid key. The event's message id comes from
        the body, so a redelivered start announces the same event again, not a new one."""
        name = (
            saga
            if isinstance(saga, str) and len(saga) <= MAX_NAME_LENGTH and NAME_RE.match(saga)
            else None
        )
        usable = key if isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH else None
        message_id = f"start-rejected:{hashlib.sha256(message.body).hexdigest()[:32]}"
        engine = self._engine()
        await with_db_retries(
            lambda: engine.reject_start(name, usable, error, message_id=message_id)
        )

    async def _on_reply(self, message: Delivery) -> None:
        engine = self._engine()
        reply = parse(Reply, message)
        structlog.contextvars.bind_contextvars(
            saga_id=str(reply.saga_id), step=reply.step, command_id=str(reply.command_id)
        )
        await with_db_retries(lambda: engine.reply(reply))

    async def _on_requests(self, messages: Sequence[Delivery]) -> None:
        """Group commit: runs of starts begin in one transaction each, a cancel between them
        is applied in its place, so their order holds. A poison message or a start that
        cannot be made raises, and the consumer falls back to `_on_request` one by one (the
        starts made already are found again by their keys)."""
        run: list[tuple[StartSaga, dict[str, str] | None]] = []
        for message in messages:
            if message.routing_key == "start":
                run.append((parse(StartSaga, message), trace.from_headers(message.headers)))
                continue
            await self._starts(run)
            run = []
            await self._on_request(message)
        await self._starts(run)

    async def _starts(self, run: Sequence[tuple[StartSaga, dict[str, str] | None]]) -> None:
        """Begin a run of starts, as many at a time as admission control lets begin."""
        while run:
            admitted = await self._admit(len(run))
            await self._engine().starts(run[:admitted])
            run = run[admitted:]

    async def _on_replies(self, messages: Sequence[Delivery]) -> None:
        """Group commit: the replies waiting in the queue, applied in one transaction. A
        poison message or a lost race raises, and the consumer falls back to `_on_reply`."""
        await self._engine().replies([parse(Reply, m) for m in messages])

    async def _admit(self, starts: int) -> int:
        return starts if self.admission is None else await self.admission.admit(starts)

    def _engine(self) -> Engine:
        assert self.engine is not None, "start() first"
        return self.engine

    # -- background sweeps -----------------------------------------------------------------

    async def _timers(self) -> bool:
        limit = 200
        return await self._engine().fire_timers(limit) == limit

    async def _locks(self) -> bool:
        limit = 100
        return await self._engine().sweep_locks(limit) >= limit

    async def _relay(self) -> bool:
        limit = 500
        age = timedelta(seconds=self.settings.relay_age)
        return await self._engine().relay(age, limit) == limit

    async def _watch_command_queues(self, connection: AbstractRobustConnection) -> None:
        """Count the command queues' consumers every SAGA_CONSUMER_CHECK_INTERVAL, the first
        time one interval after start-up: participants may come up after the orchestrator."""
        interval = self.settings.consumer_check_interval

        async def check() -> bool:
            await self.command_queues.check(connection)
            return False

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), interval)
        await self._loop("command_queues", check, interval)

    async def _loop(self, name: str, sweep: Callable[[], Awaitable[bool]], interval: float) -> None:
        """Run `sweep` every `interval`, at once again while it reports a full batch. While it
        keeps failing (the database is down), wait longer each time, up to
        SWEEP_BACKOFF_CAP, and log the traceback of the first failure only: a sweep failing
        every 50 ms must not spend the process on logging it."""
        failures = 0
        while not self._stopping.is_set():
            try:
                more = await sweep()
            except Exception as exc:
                if failures == 0:
                    log.exception("sweep_failed", sweep=name)
                else:
                    log.warning("sweep_failed", sweep=name, error=repr(exc), failures=failures + 1)
                failures += 1
                more = False
            else:
                if failures:
                    log.info("sweep_recovered", sweep=name, failures=failures)
                failures = 0
            if not more:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), sweep_wait(interval, failures))


def sweep_wait(interval: float, failures: int) -> float:
    """How long a sweep loop waits before its next try: `interval`, doubled with each failure
    in a row, at most SWEEP_BACKOFF_CAP (or `interval`, when that is longer)."""
    backoff: float = interval * 2 ** min(failures, 16)
    return min(backoff, max(interval, SWEEP_BACKOFF_CAP))


def _closing(watch: BlockedWatch) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        watch.close()

    return close


async def run_until_signalled(service: Orchestrator) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with service:
        await stop.wait()
