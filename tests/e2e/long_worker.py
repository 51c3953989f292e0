"""A participant process with one long step, for the crash test: `python -m tests.e2e.long_worker`.

`vault.export` writes its effect through the barrier, then works EXPORT_SECONDS (from the
environment) while the SDK heartbeats; the test kills the process with SIGKILL mid-way.
Settings come from the usual SAGA_* variables; the effects go to the saga database.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.logging import configure_logging
from adapters.participant.barrier import Barrier
from adapters.participant.core import Participant
from adapters.participant.serve import serve
from adapters.postgres.database import make_engine
from adapters.settings import Settings
from orchestrator.messages import Command

EFFECTS = "CREATE TABLE IF NOT EXISTS vault_effects (job_id text, attempt int, pid int)"


async def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    engine = make_engine(settings.database_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(EFFECTS))
    barrier = Barrier(engine, table="vault_barrier")
    await barrier.install()
    seconds = float(os.environ["EXPORT_SECONDS"])
    vault = Participant("vault")

    @vault.handler("vault.export")
    @barrier.guard
    async def export(cmd: Command, conn: AsyncConnection) -> dict[str, Any]:
        await conn.execute(
            sa.text("INSERT INTO vault_effects VALUES (:job, :attempt, :pid)"),
            {"job": cmd.payload["job_id"], "attempt": cmd.attempt, "pid": os.getpid()},
        )
        await asyncio.sleep(seconds)  # the work itself
        return {"exported": cmd.payload["job_id"], "attempt": cmd.attempt}

    try:
        await serve(settings, [vault])
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
