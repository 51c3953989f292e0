"""Hot statements sent straight through psycopg, on the connection of a SQLAlchemy transaction.

SQLAlchemy's execution context (compiled-cache lookup, parameter processing, result proxy)
costs ~0.2 ms of CPU per statement on this hardware, as much as the round trip itself; the
orchestrator's reply path and the participant's barrier claim run a few such statements per
message. `fetch` skips it for statements written as psycopg text (`%(name)s` placeholders),
in the same transaction as everything else the connection runs. Errors come out as
SQLAlchemy's (`DBAPIError` subclasses), as from any other statement, so callers and
`adapters.postgres.errors.translated` treat them alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection


async def fetch(conn: AsyncConnection, query: str, params: Mapping[str, Any]) -> list[Any]:
    """Run `query` and return its rows as named tuples (none for a statement without any)."""
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    try:
        async with driver.cursor(row_factory=namedtuple_row) as cursor:
            await cursor.execute(query, params)
            return await cursor.fetchall() if cursor.description is not None else []
    except psycopg.Error as exc:
        # hide_parameters: saga input and results may hold personal data; no log gets them.
        raise DBAPIError.instance(
            query, None, exc, psycopg.Error, hide_parameters=True, dialect=conn.dialect
        ) from exc
