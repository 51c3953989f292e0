"""Alembic environment. Run programmatically by adapters.postgres.migrate (on a connection it
passes in) or by the `alembic` command line (opening its own async engine)."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from adapters.postgres.database import single_use_engine
from adapters.postgres.tables import metadata
from adapters.settings import Settings

config = context.config


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    return Settings().database_url  # the `alembic` command line


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        # One transaction per revision: a revision that builds an index CONCURRENTLY steps
        # out of it (autocommit_block), and a failure keeps the revisions before it.
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = single_use_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run_on(given)
    else:
        # Only the command line gets here, so the logging set-up of alembic.ini is welcome.
        if config.config_file_name is not None:
            fileConfig(config.config_file_name, disable_existing_loggers=False)
        asyncio.run(_run_async())
