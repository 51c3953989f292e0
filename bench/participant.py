"""The bench participant: `python -m bench.participant` (env BENCH_DATABASE_URL and the
engine's SAGA_AMQP_URL / SAGA_AMQP_PREFIX). Every command writes one row into `bench.writes`
inside the SDK's exactly-once barrier; `bench.c` fails for the sagas `bench.sagas.fails` names.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters import eventloop
from adapters.logging import configure_logging
from adapters.participant import Participant, StepFailed
from adapters.participant.barrier import Barrier
from adapters.participant.serve import serve
from adapters.postgres.database import make_engine
from adapters.settings import Settings
from bench.sagas import fails
from orchestrator.messages import Command

SCHEMA = "bench"
metadata = sa.MetaData(schema=SCHEMA)
writes = sa.Table(
    "writes",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("saga_id", sa.Uuid, nullable=False),
    sa.Column("command", sa.Text, nullable=False),
)


async def create(engine: AsyncEngine) -> Barrier:
    """The bench table and the barrier; the bench database is fresh, so no layout checks."""
    async with engine.begin() as conn:
        await conn.execute(sa.schema.CreateSchema(SCHEMA, if_not_exists=True))
        await conn.run_sync(metadata.create_all)
    barrier = Barrier(engine, schema=SCHEMA)
    await barrier.install()
    return barrier


def build(barrier: Barrier) -> Participant:
    bench = Participant("bench")

    async def write(cmd: Command, conn: AsyncConnection) -> None:
        await conn.execute(sa.insert(writes).values(saga_id=cmd.saga_id, command=cmd.command))

    for name in ("bench.a", "bench.b", "bench.undo_a", "bench.undo_b"):

        @bench.handler(name)
        @barrier.guard
        async def step(cmd: Command, conn: AsyncConnection) -> None:
            await write(cmd, conn)

    @bench.handler("bench.c")
    @barrier.guard
    async def step_c(cmd: Command, conn: AsyncConnection) -> None:
        if fails(int(cmd.payload["n"])):
            raise StepFailed("bench_failure", "every tenth bench saga fails at c", retryable=False)
        await write(cmd, conn)

    return bench


async def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    engine = make_engine(
        os.environ["BENCH_DATABASE_URL"], pool_size=settings.db_pool_size, max_overflow=0
    )
    try:
        barrier = await create(engine)
        await serve(settings, [build(barrier)], clock_database=engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    eventloop.run(main())
