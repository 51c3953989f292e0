"""What the `saga` commands share: settings, running a coroutine with readable errors, a
store or an engine for the length of one command, finding a saga by id or key, and masking
the saga data they print as the API does (`--reveal` to see it, logged)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import structlog
import typer
from pydantic import ValidationError

from adapters import eventloop
from adapters.logging import configure_logging
from adapters.redaction import redact
from adapters.saga_redaction import Redactor
from adapters.settings import Settings
from orchestrator.errors import (
    DefinitionConflict,
    DefinitionError,
    OperationRefused,
    SagaError,
    SagaNotFound,
)
from orchestrator.state import SagaState

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from adapters.postgres.dbclock import DatabaseClock
    from orchestrator.registry import Registry

T = TypeVar("T")
# PostgreSQL's refusal of a connection to a database that does not exist (no SQLSTATE comes
# with a refused connection, so its text is all there is).
_NO_DATABASE = re.compile(r'database ".*" does not exist')

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
# The read and act commands talk to the HTTP API instead of the database when given a URL
# (adapters/cli/api.py).
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="SAGA_API_URL",
        help="The HTTP API of `saga run`, e.g. http://127.0.0.1:8080: use it instead of the "
        "database. Exit codes: 1 refused, 2 bad input or not allowed, 3 not found, "
        "4 unreachable.",
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SAGA_API_TOKEN",
        help="Bearer token for --url; prefer the variable (a command line is visible to "
        "other users).",
    ),
]
RevealOpt = Annotated[
    bool,
    typer.Option(
        "--reveal",
        help="Print the values SAGA_REDACT_FIELDS names as stored instead of masked (as the "
        "API shows them); logged with your user name and the saga. On the database only.",
    ),
]


def settings(*, long_running: bool = False) -> Settings:
    """The SAGA_* settings, with logging set up; a bad one is a line saying which and why,
    exit 2. A command's output is on stdout and its log lines on stderr: in console format
    for the one-shot commands, whose logs a person reads beside the output, unless
    SAGA_LOG_FORMAT names a format; `auto` for the long-running ones (`saga run`,
    `saga worker`: JSON when stderr is not a terminal)."""
    try:
        loaded = Settings()
    except ValidationError as exc:
        for problem in setting_problems(exc):
            typer.secho(f"error: {problem}", fg="red", err=True)
        raise typer.Exit(2) from None
    fmt = "console" if loaded.log_format == "auto" and not long_running else loaded.log_format
    configure_logging(fmt, loaded.log_level)
    return loaded


def setting_problems(exc: ValidationError) -> list[str]:
    """One line per bad setting, named as its variable, with the value given (secrets
    masked); a rule across settings says in its own words which ones it names."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    problems = []
    for error in exc.errors(include_url=False):
        why = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            problems.append(why)
            continue
        field = str(error["loc"][0])
        given = redact(error["input"], field)
        problems.append(f"{prefix}{field.upper()}={given!r}: {why}")
    return problems


def run(coro: Awaitable[T]) -> T:
    """Run `coro`; engine errors become a message and an exit code, the same as over the
    API: 1 when an operator action was refused (the saga is in the wrong state), 3 when the
    saga does not exist, 2 for everything else."""
    try:
        return eventloop.run(coro)  # type: ignore[arg-type]
    except OperationRefused as exc:
        typer.secho(f"refused: {exc}", fg="yellow", err=True)
        raise typer.Exit(1) from exc
    except SagaNotFound as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(3) from exc
    except (DefinitionConflict, DefinitionError, SagaError) as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:
        message = unreachable(exc)
        if message is None:
            raise
        # One line saying what is wrong, no traceback, exit 2: wrong credentials or address
        # are fixed by an operator, not by retrying (docs/security.md).
        typer.secho(f"error: {message}", fg="red", err=True)
        raise typer.Exit(2) from None


def unreachable(exc: BaseException) -> str | None:
    """What to tell an operator if `exc` means RabbitMQ or PostgreSQL refused us or cannot
    be reached, or the database lacks this release's schema; None for anything else.
    Logged too (but for the schema, which only `saga migrate` fixes), secrets masked."""
    from aiormq.exceptions import AMQPConnectionError
    from sqlalchemy.exc import OperationalError

    from adapters.postgres.schema import SchemaNotReady
    from adapters.rabbitmq.connection import BrokerUnavailable
    from adapters.redaction import redact_text

    if isinstance(exc, SchemaNotReady):
        return str(exc)
    if isinstance(exc, BrokerUnavailable):
        return str(exc)  # logged by connect() already
    if isinstance(exc, AMQPConnectionError):
        # The connection broke before the robust connection took over (while starting): a
        # supervisor restarts the process; a traceback would only bury the reason.
        reason = " ".join(redact_text(str(exc)).split())
        structlog.get_logger(__name__).error("amqp_connection_lost", reason=reason)
        return f"lost the connection to RabbitMQ: {reason}"
    if isinstance(exc, OperationalError):
        reason = " ".join(redact_text(str(exc.orig or exc)).split())
        structlog.get_logger(__name__).error("database_connect_failed", reason=reason)
        if _NO_DATABASE.search(reason):
            return f"cannot use the database: {reason}: run `saga migrate`, which creates it"
        return f"cannot use the database: {reason}"
    return None


async def with_store(config: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from adapters.postgres.database import make_engine
    from adapters.postgres.schema import require_schema
    from adapters.postgres.store import PostgresStore

    db = make_engine(config.database_url, pool_size=1)
    try:
        await require_schema(db)
        return await fn(PostgresStore(db))
    finally:
        await db.dispose()


async def with_engine(
    config: Settings, fn: Callable[[Any], Awaitable[T]], *, retry: bool = True
) -> T:
    """An Engine on the configured database and broker, for one operator action: what it
    decides is published like any transition (outbox, confirms). Lost races are retried
    (`fn` runs again), unless `retry` is False: a bulk action, whose batches committed
    before a failure must not be listed and judged again as if untouched."""
    from adapters.postgres.database import make_engine
    from adapters.postgres.retries import with_db_retries
    from adapters.postgres.schema import require_schema
    from adapters.postgres.store import PostgresStore
    from adapters.rabbitmq.connection import connect, open_channel
    from adapters.rabbitmq.publisher import RabbitPublisher
    from adapters.rabbitmq.topology import Topology
    from adapters.tracing.wiring import engine_spans
    from orchestrator.engine import Engine
    from orchestrator.registry import load_modules

    async with contextlib.AsyncExitStack() as cleanup:
        db = make_engine(config.database_url, pool_size=1)
        cleanup.push_async_callback(db.dispose)
        await require_schema(db)  # before connecting to the broker
        clock = await database_clock(config, db)
        connection = await connect(config.amqp_url)
        cleanup.push_async_callback(connection.close)
        channel = await open_channel(connection)
        publisher = RabbitPublisher(channel, Topology(config.amqp_prefix))
        # An operator's action ends step attempts too: their spans are exported as `saga
        # run`'s are, before the command exits.
        spans = engine_spans(os.environ)
        if spans is not None:
            cleanup.callback(spans.shutdown)
        engine = Engine(
            PostgresStore(db),
            publisher,
            load_modules(config.modules),
            clock=clock,
            spans=spans,
        )
        try:
            return await (with_db_retries(lambda: fn(engine)) if retry else fn(engine))
        finally:
            # What it published is deleted now, as `saga run` does at its relay sweeps: left
            # behind, a relay would send it a second time.
            with contextlib.suppress(Exception):
                await engine.forget_published()


async def database_clock(config: Settings, db: AsyncEngine) -> DatabaseClock:
    """The database's clock, synced once: what a command's decisions go by, as `saga run`'s
    do (adapters/postgres/dbclock.py). A host clock off by more than SAGA_CLOCK_SKEW_MAX is
    logged (`clock_skew`), and the command goes on by the database's."""
    from adapters.postgres.dbclock import DatabaseClock, database_session

    clock = DatabaseClock(database_session(db), max_skew=config.clock_skew_max)
    await clock.sync()
    return clock


def loaded_definitions(config: Settings) -> Registry:
    """The definitions of SAGA_MODULES, which tell a saga's wait steps apart from its other
    steps in what `saga status` and `saga list` show, and declare the search fields `saga
    list --where` filters on. Saga modules that fail to load leave them out, with a warning:
    reading sagas must not depend on them."""
    from orchestrator.registry import Registry, load_modules

    try:
        return load_modules(config.modules)
    except DefinitionError as exc:
        typer.secho(
            f"warning: wait steps are not shown, search fields not known: {exc}",
            fg="yellow",
            err=True,
        )
        return Registry()


async def find_in(store: Any, ident: str) -> SagaState:
    """The saga with this id, or the newest one with this start key, in `store`."""
    from orchestrator.ports import SagaQuery

    try:
        state: SagaState | None = await store.get(uuid.UUID(ident))
    except ValueError:
        found = await store.find(SagaQuery(key=ident, limit=1))
        state = found[0] if found else None
    if state is None:
        raise SagaNotFound(f"no saga with id or key {ident!r}")
    return state


def masking(
    config: Settings, reveal: bool, command: str, saga_ids: Iterable[uuid.UUID]
) -> Redactor:
    """How a command prints saga data it read from the database: masked by
    SAGA_REDACT_FIELDS, as the API shows it; with --reveal as stored, which is logged
    (`saga_data_revealed`: who, which command, which sagas) on the command's log, standard
    error."""
    if not reveal:
        return Redactor(config.redact_fields)
    structlog.get_logger(__name__).warning(
        "saga_data_revealed",
        who=getpass.getuser(),
        command=command,
        saga_ids=[str(i) for i in saga_ids],
        fields=config.redact_fields,
    )
    return Redactor(())


def refuse_reveal_over_api(reveal: bool) -> None:
    """--reveal reads the database: the API masks for every caller."""
    if reveal:
        typer.secho(
            "error: --reveal reads the database; the API masks SAGA_REDACT_FIELDS for every "
            "caller: drop --url (and SAGA_API_URL) to reveal, or drop --reveal",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)


def parse_time(label: str, raw: str | None) -> datetime | None:
    """An ISO 8601 moment; UTC when it has no offset."""
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        typer.secho(
            f"error: {label} is not an ISO 8601 time (e.g. 2030-01-31T12:00:00Z): {raw!r}",
            fg="red",
            err=True,
        )
        raise typer.Exit(2) from exc
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_json(label: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        typer.secho(f"error: {label} is not valid JSON: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
