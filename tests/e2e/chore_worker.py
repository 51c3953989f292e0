"""The participant of tests/e2e/chore_saga.py, as a process: `python -m tests.e2e.chore_worker`.

`chores.do` records each run of its handler (saga, attempt, process) in `chore_runs` of the
saga database, committed at once, then works CHORE_SECONDS. No barrier: a command delivered
or dispatched again runs again, and is counted. Commands expire by the database's clock
(`serve(..., clock_database=...)`), whatever this host's says.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import sqlalchemy as sa

from adapters.logging import configure_logging
from adapters.participant.core import Participant
from adapters.participant.serve import serve
from adapters.postgres.database import make_engine
from adapters.settings import Settings
from orchestrator.messages import Command
from tests.e2e.chore_saga import CHORE_SECONDS

RUNS = "CREATE TABLE IF NOT EXISTS chore_runs (saga_id uuid, attempt int, pid int)"


async def main() -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    engine = make_engine(settings.database_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(RUNS))
    chores = Participant("chores")

    @chores.handler("chores.do")
    async def do(cmd: Command) -> dict[str, Any]:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO chore_runs VALUES (:saga, :attempt, :pid)"),
                {"saga": cmd.saga_id, "attempt": cmd.attempt, "pid": os.getpid()},
            )
        await asyncio.sleep(CHORE_SECONDS)  # the work itself
        return {"done": cmd.payload["chore_id"]}

    try:
        await serve(settings, [chores], clock_database=engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
