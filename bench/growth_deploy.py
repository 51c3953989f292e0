"""One deployment of the growth bench: real `saga run` (and the bench participant) on a
database of the run, under a broker prefix of its own, taken down with everything it
declared. Its own prefix because other benches on this broker use the unprefixed names: two
orchestrators on one `saga.requests` would take each other's starts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from bench.engine import delete_topology
from examples.demo import wait_for_consumers
from examples.processes import Processes

SERVICE = "bench"  # the participant service of bench/sagas.py's commands


def database_url(base: str, name: str) -> str:
    """`base` (SAGA_DATABASE_URL) pointed at database `name`."""
    return make_url(base).set(database=name).render_as_string(hide_password=False)


def dsn(url: str) -> str:
    """The SQLAlchemy URL as psycopg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Deployment:
    settings: Settings  # with the deployment's broker prefix: for publishers
    procs: Processes
    ready_seconds: float  # process start -> every consumer attached
    http_base: str | None  # the orchestrator's API, when asked for

    @property
    def orchestrator_pid(self) -> int:
        return self.procs.procs["orchestrator"].pid


@asynccontextmanager
async def deployed(
    base: Settings,
    prefix: str,
    url: str,
    log_dir: Path,
    *,
    participant_url: str | None,
    http: bool,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[Deployment]:
    """`saga run` on `url` (migrated), plus the participant on `participant_url` unless
    None, plus the HTTP API on a free loopback port when `http`; `env` on top of its
    environment."""
    settings = base.model_copy(update={"amqp_prefix": prefix})
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    procs = Processes(
        env={
            "SAGA_DATABASE_URL": url,
            "SAGA_AMQP_URL": settings.amqp_url,
            "SAGA_AMQP_PREFIX": prefix,
            "SAGA_MODULES": "bench.sagas",
            "SAGA_LOG_FORMAT": "json",
            "SAGA_HTTP_BIND": "127.0.0.1:0" if http else "",
            **({"BENCH_DATABASE_URL": participant_url} if participant_url else {}),
            **(env or {}),
        },
        log_dir=log_dir,
    )
    queues = ["saga.requests", "saga.replies"]
    try:
        began = time.perf_counter()
        procs.start_orchestrator()
        if participant_url:
            procs.start("participant", ["-m", "bench.participant"])
            queues.append(Topology.command_queue(SERVICE))
        await wait_for_consumers(settings, queues, timeout=120)
        ready = time.perf_counter() - began
        address = await _http_base(log_dir / "orchestrator.log") if http else None
        yield Deployment(settings, procs, ready, address)
    except BaseException:
        procs.print_log_tails()
        raise
    finally:
        procs.stop_all()
        await delete_topology(settings, [SERVICE])


async def _http_base(log: Path, timeout: float = 30.0) -> str:
    """The URL `saga run` logs once it serves HTTP: port 0 was bound to a free port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        for line in text.splitlines():
            if '"http_serving"' in line:
                return str(json.loads(line)["url"]).rstrip("/")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"saga run logged no http_serving line in {timeout}s ({log})")
