"""The connections a service may write its starts on: SQLAlchemy's `AsyncConnection` (on the
psycopg 3 driver) and plain psycopg 3's `AsyncConnection`. Statements are psycopg text
(`%(name)s` placeholders), run on the caller's connection inside the caller's transaction;
nothing here commits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.ext.asyncio import AsyncConnection as SqlAlchemyConnection

Connection = SqlAlchemyConnection | psycopg.AsyncConnection[Any]


async def execute(
    conn: Connection, statement: str, params: Mapping[str, Any] | None = None
) -> None:
    if isinstance(conn, SqlAlchemyConnection):
        # exec_driver_sql begins the connection's transaction if none has begun yet.
        await conn.exec_driver_sql(statement, dict(params) if params is not None else None)
    elif isinstance(conn, psycopg.AsyncConnection):
        await conn.execute(statement, params)
    else:
        raise TypeError(
            f"expected an SQLAlchemy AsyncConnection or a psycopg AsyncConnection, got "
            f"{type(conn).__name__}"
        )


async def require_transaction(conn: Connection, what: str) -> None:
    """Refuse a connection in autocommit outside a transaction block: a row written there
    would be committed at once, apart from the caller's business writes."""
    if isinstance(conn, SqlAlchemyConnection):
        raw = (await conn.get_raw_connection()).driver_connection
    else:
        raw = conn
    if not isinstance(raw, psycopg.AsyncConnection):
        raise TypeError(
            f"{what} needs the psycopg 3 driver (postgresql+psycopg://), got {type(raw).__name__}"
        )
    if raw.autocommit and raw.info.transaction_status == TransactionStatus.IDLE:
        raise RuntimeError(
            f"{what} writes in the caller's transaction, and this connection is in autocommit "
            "with none open: the row would be committed on its own. Call it inside "
            "`async with conn.transaction():` (psycopg) or on a connection without "
            "AUTOCOMMIT (SQLAlchemy: `async with engine.begin() as conn:`)"
        )
