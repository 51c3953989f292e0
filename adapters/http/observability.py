"""`GET /metrics`, `GET /healthz`, `GET /readyz`: what Prometheus and an orchestrator's
probes ask. Open to all, no token: they say nothing about any saga (readiness names what
failed, not how: the reason goes to the log).

`create_app` sets on `app.state`:

- `db_engine`: the `AsyncEngine` of the saga store, read by `/metrics` and `/readyz`;
- `settings`: the `Settings`, whose `amqp_url` `/readyz` connects to;
- `probes` (optional): a `Probes` replacing those default readiness checks, e.g. one that
  asks the process's own broker connection instead of opening another;
- `unconsumed_queues` (optional): an `Unconsumed`, the command queues that had no consumer
  at `saga run`'s last check. `/readyz` lists them as `unconsumed_queues` and stays ready:
  a participant that is down (or a misspelled command) must not take the API down with it.
- `amqp_blocked` (optional): an `Alarm`, what RabbitMQ blocks the publishing connection of
  `saga run` for (adapters/rabbitmq/blocking.py). While it names an alarm, `/readyz` is 503
  with check `rabbitmq_publishing` saying which: starts sent to this replica would be stored
  but not dispatched, so a load balancer should send them elsewhere.
- `clock_skew` (optional): an `Alarm`, how far this host's wall clock is off the database's
  when beyond SAGA_CLOCK_SKEW_MAX (adapters/postgres/dbclock.py). While it says so, `/readyz`
  is 503 with check `clock`: the engine goes by the database's clock, but a host whose time
  is that wrong needs someone to fix it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import aio_pika
import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import metrics
from adapters.amqp_urls import node_urls

log = structlog.get_logger(__name__)

router = APIRouter(tags=["observability"])

# The Prometheus text format generate_latest writes (not the 1.0.0 one newer scrapers ask for).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROBLEM_JSON = "application/problem+json"
CHECK_TIMEOUT = 2.0
METRICS_DB_TIMEOUT = 5.0

Check = Callable[[], Awaitable[None]]
"""Returns when its dependency can be used; raises when it cannot."""
Unconsumed = Callable[[], Sequence[str]]
"""The names of the command queues without a consumer at the last check."""
Alarm = Callable[[], str | None]
"""What is wrong with the process (the resource alarm the broker blocks its publishing
connection for, the skew of its host's clock), or None."""
PUBLISHING = "rabbitmq_publishing"
CLOCK = "clock"


async def check_postgres(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def check_rabbitmq(amqp_url: str, *, timeout: float = CHECK_TIMEOUT) -> None:
    """A fresh connection and a channel on it: the broker accepts this process's login and
    hands out channels. When SAGA_AMQP_URL lists a cluster's nodes, one node that does is
    enough (the process's own connection moves to a live node): all are asked at once, and
    the check fails, with the error that came first, only when every node failed."""
    checks = [asyncio.ensure_future(_check_node(url, timeout)) for url in node_urls(amqp_url)]
    try:
        failure: BaseException | None = None
        for check in asyncio.as_completed(checks):
            try:
                await check
            except Exception as exc:
                failure = failure or exc
            else:
                return
        assert failure is not None
        raise failure
    finally:
        for check in checks:
            check.cancel()
        await asyncio.gather(*checks, return_exceptions=True)


async def _check_node(url: str, timeout: float) -> None:
    connection = await aio_pika.connect(url, timeout=timeout)
    try:
        channel = await connection.channel()
        await channel.close()
    finally:
        await connection.close()


@dataclass(frozen=True)
class Probes:
    """Readiness checks by name, each given `timeout` seconds; all run at once."""

    checks: Mapping[str, Check]
    timeout: float = CHECK_TIMEOUT

    @classmethod
    def default(
        cls, db_engine: AsyncEngine, amqp_url: str, *, timeout: float = CHECK_TIMEOUT
    ) -> Probes:
        return cls(
            {
                "postgres": partial(check_postgres, db_engine),
                "rabbitmq": partial(check_rabbitmq, amqp_url, timeout=timeout),
            },
            timeout,
        )

    async def run(self) -> dict[str, str]:
        """name -> "ok", or what went wrong in a word (the exception's type, or "timeout")."""
        names = list(self.checks)
        results = await asyncio.gather(*(self._one(n, self.checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    async def _one(self, name: str, check: Check) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                await check()
        except TimeoutError:
            log.warning("readiness_check_failed", check=name, error="timeout")
            return "timeout"
        except Exception as exc:
            log.warning(
                "readiness_check_failed", check=name, error=str(exc)[:300] or type(exc).__name__
            )
            return type(exc).__name__
        return "ok"


def _probes(request: Request) -> Probes:
    state = request.app.state
    probes: Probes | None = getattr(state, "probes", None)
    if probes is None:
        probes = Probes.default(state.db_engine, state.settings.amqp_url)
    return probes


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Postgres and RabbitMQ answer, RabbitMQ does not block publishing, and the "
    "host's clock agrees with the database's",
    responses={
        200: {"description": "Every check passed."},
        503: {"description": "A check failed", "content": {PROBLEM_JSON: {}}},
    },
)
async def readyz(request: Request) -> JSONResponse:
    checks = await _probes(request).run()
    alarm: Alarm | None = getattr(request.app.state, "amqp_blocked", None)
    if alarm is not None:
        blocked = alarm()
        checks[PUBLISHING] = "ok" if blocked is None else f"blocked by the broker: {blocked}"
    skew: Alarm | None = getattr(request.app.state, "clock_skew", None)
    if skew is not None:
        checks[CLOCK] = skew() or "ok"
    failed = {name: why for name, why in checks.items() if why != "ok"}
    # A warning, not a failed check: the participants' fault, not this process's.
    unconsumed: Unconsumed | None = getattr(request.app.state, "unconsumed_queues", None)
    warnings = {} if unconsumed is None else {"unconsumed_queues": list(unconsumed())}
    if not failed:
        return JSONResponse({"status": "ready", "checks": checks, **warnings})
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": "Not ready",
        "status": 503,
        "detail": "; ".join(f"{name} check failed: {why}" for name, why in failed.items()),
        "checks": checks,
        **warnings,
    }
    return JSONResponse(body, status_code=503, media_type=PROBLEM_JSON)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {METRICS_CONTENT_TYPE: {}}}},
)
async def prometheus_metrics(request: Request) -> Response:
    # Counters live in this process; the database gauges are read now, for this scrape.
    await metrics.refresh_gauges(request.app.state.db_engine, timeout=METRICS_DB_TIMEOUT)
    return Response(metrics.render(), media_type=METRICS_CONTENT_TYPE)
