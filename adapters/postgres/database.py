"""Engines, and creating a database that is not there yet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import URL, make_url, text
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

_DUPLICATE_DATABASE = "42P04"
_UNIQUE_VIOLATION = "23505"

# Every timestamptz comes back in UTC whatever the server's default time zone is.
_CONNECT_ARGS = {"options": "-c timezone=UTC"}


def psycopg_url(url: str | URL) -> URL:
    """The URL with the psycopg 3 driver, which is the only one the adapter is tested with."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL, pool_size: int = 5, max_overflow: int = 10) -> AsyncEngine:
    """The pooled engine a long-running process shares between all its transactions.

    Connections beyond `pool_size` (up to `max_overflow` more) are opened for one
    transaction and closed after it: under sustained load that is a PostgreSQL backend
    forked per transaction. A process whose concurrency is bounded by something else (a
    participant's handlers, by its prefetch) does better with `max_overflow=0`: the surplus
    waits for a pooled connection instead."""
    # hide_parameters: a failed statement's error (logged with its traceback) must not carry
    # saga input or results, which may hold personal data, into the logs.
    return create_async_engine(
        psycopg_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args=_CONNECT_ARGS,
        hide_parameters=True,
    )


def single_use_engine(url: str | URL, *, autocommit: bool = False) -> AsyncEngine:
    """An engine that keeps no connection open after use: for migrations and admin work
    (a database cannot be cloned or dropped while a pooled connection lingers on it)."""
    options = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    return create_async_engine(
        psycopg_url(url), poolclass=NullPool, connect_args=_CONNECT_ARGS, **options
    )


async def ensure_database(url: str | URL) -> bool:
    """Create the URL's database unless it exists; True when it was created."""
    name = database_name(url)
    async with maintenance(url) as conn:
        found = await conn.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        )
        if found:
            return False
        try:
            await conn.exec_driver_sql(f"CREATE DATABASE {quote_name(conn, name)}")
        except (ProgrammingError, IntegrityError) as exc:
            # Another process created it between our check and our CREATE: PostgreSQL says
            # duplicate_database, or, when the two CREATEs overlap, a unique violation on
            # pg_database's name index.
            if getattr(exc.orig, "sqlstate", None) in (_DUPLICATE_DATABASE, _UNIQUE_VIOLATION):
                return False
            raise
    return True


@asynccontextmanager
async def maintenance(url: str | URL) -> AsyncIterator[AsyncConnection]:
    """A connection to the server's `postgres` database, in autocommit: CREATE/DROP DATABASE
    can run neither inside a transaction nor on the database they act on."""
    engine = single_use_engine(psycopg_url(url).set(database="postgres"), autocommit=True)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


def database_name(url: str | URL) -> str:
    name = make_url(url).database
    if not name:
        raise ValueError(f"the database URL {make_url(url)!r} names no database")
    return name


def quote_name(conn: AsyncConnection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)
