"""The orchestrator's memory with many sagas in flight: `saga run` without the participant,
so every saga waits on its first step's command, which nobody takes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from adapters.postgres.migrate import upgrade
from adapters.settings import Settings
from bench.engine import EngineDb, EngineResult, Publisher, publish_all
from bench.growth_deploy import deployed, dsn

# Running, with step a's command out (a step waiting to retry has none). And nothing left
# in the outbox: every command was handed to the broker, not only committed.
_IN_FLIGHT = """
SELECT (SELECT count(*) FROM saga_instances i JOIN saga_steps s ON s.saga_id = i.id
        WHERE i.name = 'bench' AND i.status = 'running' AND s.idx = 0
          AND s.status = 'running' AND s.command_id IS NOT NULL),
       (SELECT count(*) FROM outbox)
"""


def status_mb(pid: int, field: str) -> float | None:
    """A /proc/<pid>/status figure in MB (VmRSS: resident now; VmHWM: the peak so far)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _memory(pid: int) -> dict[str, float | None]:
    return {"rss_mb": status_mb(pid, "VmRSS"), "hwm_mb": status_mb(pid, "VmHWM")}


async def in_flight(
    base: Settings,
    prefix: str,
    url: str,
    log_dir: Path,
    *,
    count: int,
    settle: float,
    timeout: float,
) -> dict[str, Any]:
    await upgrade(url)
    # The point is 10,000 sagas in flight at once: no admission limit (SAGA_MAX_ACTIVE).
    unlimited = {"SAGA_MAX_ACTIVE": "0"}
    async with deployed(
        base, prefix, url, log_dir, participant_url=None, http=False, env=unlimited
    ) as dep:
        pid = dep.orchestrator_pid
        idle = _memory(pid)
        publisher, db = Publisher(dep.settings), EngineDb(dsn(url))
        await publisher.open()
        await db.open()
        try:
            began = time.perf_counter()
            await publish_all(publisher, [(f"fly-{i}", i) for i in range(count)], EngineResult())
            reached = await _wait(db, count, timeout)
            seconds = time.perf_counter() - began
            loaded = _memory(pid)
            # What the timer sweep (every 0.2 s) and the outbox relay (every 1 s) add once
            # they have passed over these sagas a few times.
            await asyncio.sleep(settle)
            settled = _memory(pid)
        finally:
            await publisher.close()
            await db.close()
    return {
        "sagas": count,
        "reached": reached,
        "seconds_to_reach": seconds,
        "starts_per_s": reached / seconds if seconds > 0 else None,
        "settle_seconds": settle,
        "idle": idle,
        "in_flight": loaded,
        "after_settle": settled,
    }


async def _wait(db: EngineDb, count: int, timeout: float) -> int:
    """How many sagas were in flight when all were, or when the deadline passed."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await db.fetch(_IN_FLIGHT, ())
        ready, outbox = rows[0]
        assert isinstance(ready, int) and isinstance(outbox, int)
        if (ready == count and outbox == 0) or time.monotonic() > deadline:
            return ready
        await asyncio.sleep(0.5)
