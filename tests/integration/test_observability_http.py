"""`/healthz`, `/readyz` and `/metrics` on real Postgres and RabbitMQ, and on dead ones: the
router mounted as `create_app` mounts it, with what it reads from `app.state`."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.http.app import create_app
from adapters.http.observability import Probes, router
from adapters.postgres.database import make_engine
from adapters.postgres.store import PostgresStore
from adapters.settings import Settings


def closed_port() -> int:
    """A port nothing listens on: bound, then let go."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def app_with(db_engine: AsyncEngine, amqp_url: str, probes: Probes | None = None) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.state.db_engine = db_engine
    app.state.settings = Settings(amqp_url=amqp_url)
    if probes is not None:
        app.state.probes = probes
    return app


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def dead_db() -> AsyncIterator[AsyncEngine]:
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/x", pool_size=1)
    yield engine
    await engine.dispose()


async def get(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
        return await client.get(path)


async def test_healthz_answers_while_the_process_runs(dead_db: AsyncEngine) -> None:
    response = await get(app_with(dead_db, f"amqp://127.0.0.1:{closed_port()}/"), "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_ready_when_postgres_and_rabbitmq_answer(
    db: AsyncEngine, amqp_url: str
) -> None:
    response = await get(app_with(db, amqp_url), "/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"postgres": "ok", "rabbitmq": "ok"}}


async def test_readyz_names_an_unreachable_broker(db: AsyncEngine) -> None:
    port = closed_port()
    response = await get(app_with(db, f"amqp://guest:secret-pw@127.0.0.1:{port}/"), "/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 503
    assert problem["title"] == "Not ready"
    assert problem["checks"]["postgres"] == "ok"
    assert problem["checks"]["rabbitmq"] != "ok"
    assert problem["detail"].startswith("rabbitmq check failed")
    assert "secret-pw" not in response.text  # the why goes to the log, not to anyone asking


async def test_readyz_names_an_unreachable_database(dead_db: AsyncEngine, amqp_url: str) -> None:
    response = await get(app_with(dead_db, amqp_url), "/readyz")
    assert response.status_code == 503
    problem = response.json()
    assert problem["checks"]["rabbitmq"] == "ok"
    assert problem["checks"]["postgres"] != "ok"
    assert "postgres" in problem["detail"]


async def test_readyz_lists_unconsumed_queues_as_a_warning_beside_a_failed_check(
    dead_db: AsyncEngine, amqp_url: str
) -> None:
    app = app_with(dead_db, amqp_url)
    app.state.unconsumed_queues = lambda: ["commands.hotel"]
    response = await get(app, "/readyz")
    assert response.status_code == 503  # for the database alone
    problem = response.json()
    assert problem["unconsumed_queues"] == ["commands.hotel"]
    assert problem["detail"] == f"postgres check failed: {problem['checks']['postgres']}"


async def test_readyz_fails_while_the_host_clock_is_off_the_databases(
    db: AsyncEngine, amqp_url: str
) -> None:
    app = app_with(db, amqp_url)
    skew: list[str | None] = [None]
    app.state.clock_skew = lambda: skew[0]
    response = await get(app, "/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["clock"] == "ok"

    skew[0] = "this host's clock is 120.0 s ahead of the database's (SAGA_CLOCK_SKEW_MAX is 5 s)"
    response = await get(app, "/readyz")
    assert response.status_code == 503
    problem = response.json()
    assert problem["checks"] == {"postgres": "ok", "rabbitmq": "ok", "clock": skew[0]}
    assert problem["detail"] == f"clock check failed: {skew[0]}"


async def test_a_check_that_hangs_fails_by_its_timeout(db: AsyncEngine, amqp_url: str) -> None:
    async def hangs() -> None:
        await asyncio.sleep(60)  # a check that never answers: the timeout must cut it off

    async def fine() -> None:
        return None

    probes = Probes({"broker": fine, "cache": hangs}, timeout=0.2)
    response = await get(app_with(db, amqp_url, probes), "/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"broker": "ok", "cache": "timeout"}


async def test_metrics_render_counters_and_database_gauges(db: AsyncEngine, amqp_url: str) -> None:
    response = await get(app_with(db, amqp_url), "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    body = response.text
    for line in (
        "saga_database_up 1.0",
        "saga_outbox_messages 0.0",
        "saga_outbox_lag_seconds 0.0",
        "saga_timers_due 0.0",
        "saga_oldest_running_age_seconds 0.0",
        "saga_semantic_locks_held 0.0",
        "saga_semantic_lock_waiters 0.0",
        "# TYPE saga_step_seconds histogram",
        "# TYPE saga_retries_scheduled_total counter",
        "# TYPE saga_steps_compensated_total counter",
        "# TYPE saga_replies_ignored_total counter",
        "# TYPE saga_messages_dead_lettered_total counter",
        "# TYPE saga_instances gauge",
    ):
        assert line in body


async def test_metrics_still_answer_when_the_database_is_down(dead_db: AsyncEngine) -> None:
    response = await get(app_with(dead_db, "amqp://127.0.0.1:1/"), "/metrics")
    assert response.status_code == 200
    assert "saga_database_up 0.0" in response.text
    assert "saga_outbox_lag_seconds 0" not in response.text


async def test_create_app_serves_them_without_a_token(
    pg_store: PostgresStore, amqp_url: str
) -> None:
    settings = Settings(amqp_url=amqp_url, api_tokens="ops:read:s3cret-token-value")
    app = create_app(settings, pg_store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://saga.test") as client:
        assert (await client.get("/api/sagas")).status_code == 401  # the API wants one
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).json()["status"] == "ready"
        metrics_page = await client.get("/metrics")
    assert metrics_page.status_code == 200
    assert "saga_database_up 1.0" in metrics_page.text
