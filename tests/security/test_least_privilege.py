"""The least-privilege role of migration 0009: connected as a login role that is a member of
`saga_app`, the engine runs a saga end to end, and every kind of DDL is refused."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.clock import utcnow
from adapters.participant.core import Participant
from adapters.participant.worker import ParticipantWorker
from adapters.postgres.database import make_engine, single_use_engine
from adapters.postgres.migrate import downgrade, upgrade
from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.client import send_requests
from adapters.rabbitmq.connection import open_channel
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from orchestrator import Saga
from orchestrator.messages import Command, StartSaga
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from tests.fixtures.polling import eventually
from tests.fixtures.settings import fast_settings

migration = importlib.import_module("migrations.versions.0009_least_privilege_role")
ROLE = migration.ROLE
INSUFFICIENT_PRIVILEGE = "42501"


class Job(BaseModel):
    job_id: str


job = Saga("lp_job", version=1, input=Job, timeout=20)
job.remote("reserve", command="lpdesk.reserve", compensation="lpdesk.release")
job.remote("confirm", command="lpdesk.confirm", pivot=True)


def lpdesk() -> Participant:
    participant = Participant("lpdesk")

    @participant.handler("lpdesk.reserve")
    async def reserve(cmd: Command) -> dict[str, Any]:
        return {"reserved": cmd.payload["job_id"]}

    @participant.handler("lpdesk.release")
    async def release(cmd: Command) -> None:
        return None

    @participant.handler("lpdesk.confirm")
    async def confirm(cmd: Command) -> None:
        return None

    return participant


async def _admin(database_url: str, sql: str) -> None:
    engine = single_use_engine(database_url, autocommit=True)
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture
async def app_url(database_url: str) -> AsyncIterator[str]:
    """The test database's URL as a fresh login role in `saga_app` (as deployed), which is
    dropped after the test."""
    login = f"saga_app_t_{uuid.uuid4().hex[:8]}"
    await _admin(database_url, f"CREATE ROLE {login} LOGIN IN ROLE {ROLE}")
    try:
        yield make_url(database_url).set(username=login).render_as_string(hide_password=False)
    finally:
        await _admin(database_url, f"DROP ROLE {login}")


@pytest.fixture
async def app_engine(app_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(app_url, pool_size=1)
    yield engine
    await engine.dispose()


async def test_the_engine_runs_a_saga_as_the_app_role(
    app_url: str, app_engine: AsyncEngine, topology: Topology, amqp_url: str, amqp_connection: Any
) -> None:
    settings = fast_settings(app_url, amqp_url, topology.prefix)
    async with app_engine.connect() as conn:
        assert await conn.scalar(text("SELECT current_user")) != "postgres"
        assert (
            await conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
            is False
        )
    channel = await open_channel(amqp_connection)
    worker = ParticipantWorker(lpdesk(), channel, topology, clock=utcnow)
    async with Orchestrator(settings, registry=Registry([job])):
        await worker.start()
        try:
            await send_requests(
                settings, [("start", StartSaga(saga="lp_job", key="lp-1", input={"job_id": "j1"}))]
            )
            store = PostgresStore(app_engine)

            async def completed() -> bool:
                found = await store.find(SagaQuery(key="lp-1", limit=1))
                return bool(found) and found[0].status == "completed"

            await eventually(completed, message="the saga to complete as saga_app")
        finally:
            await worker.stop()
            await channel.close()


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE saga_instances",
        "DROP TABLE saga_history CASCADE",
        "ALTER TABLE saga_instances ADD COLUMN evil integer",
        "ALTER TABLE outbox DISABLE TRIGGER ALL",
        "CREATE TABLE evil (id integer)",
        "CREATE INDEX evil ON saga_instances (key)",
        "CREATE VIEW evil AS SELECT 1",
        "DROP VIEW saga_overview",
        "TRUNCATE outbox",
        "UPDATE alembic_version SET version_num = '0001'",
        "DROP SEQUENCE outbox_id_seq",
        "ALTER TABLE saga_instances OWNER TO CURRENT_USER",
    ],
)
async def test_the_app_role_may_not_change_the_schema(
    app_engine: AsyncEngine, statement: str
) -> None:
    with pytest.raises(DBAPIError) as refused:
        async with app_engine.begin() as conn:
            await conn.execute(text(statement))
    assert getattr(refused.value.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE, refused.value


async def test_every_engine_relation_is_granted_and_nothing_more(database_url: str) -> None:
    """Catches a later migration that adds a table (or view, or sequence) without granting
    on it, and any grant beyond reading and writing rows."""
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) AS owner,"
                    " has_table_privilege(:role, c.oid, 'SELECT') AS sel,"
                    " has_table_privilege(:role, c.oid, 'INSERT, UPDATE, DELETE') AS dml,"
                    " has_table_privilege(:role, c.oid, 'TRUNCATE, REFERENCES, TRIGGER')"
                    "   AS beyond"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm')"
                ),
                {"role": ROLE},
            )
            relations = {r.relname: r for r in rows}
            sequences = await conn.execute(
                text(
                    "SELECT c.relname, has_sequence_privilege(:role, c.oid, 'USAGE') AS usage"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind = 'S'"
                ),
                {"role": ROLE},
            )
            role = (
                await conn.execute(
                    text(
                        "SELECT rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolbypassrls"
                        " FROM pg_roles WHERE rolname = :role"
                    ),
                    {"role": ROLE},
                )
            ).one()
            may_create = await conn.scalar(
                text("SELECT has_schema_privilege(:role, 'public', 'CREATE')"), {"role": ROLE}
            )
            sequence_usage = {s.relname: s.usage for s in sequences}
    finally:
        await engine.dispose()
    assert tuple(role) == (False, False, False, False, False)
    assert may_create is False
    assert set(relations) >= {"saga_instances", "saga_overview", "alembic_version"}
    for name, r in relations.items():
        assert r.owner != ROLE, name
        assert r.sel, f"{ROLE} cannot read {name}"
        assert not r.beyond, f"{ROLE} has more than DML on {name}"
        writable = r.relkind in ("r", "p") and name != "alembic_version"
        assert r.dml == writable, f"{name}: DML {'missing' if writable else 'granted'}"
    assert sequence_usage and all(sequence_usage.values()), sequence_usage


async def test_creating_the_role_is_safe_when_databases_migrate_at_once(
    database_url: str,
) -> None:
    """Roles are the server's: many databases migrating at once race to create it."""
    name = f"saga_app_race_{uuid.uuid4().hex[:8]}"
    try:
        await asyncio.gather(*(_admin(database_url, migration.create_role(name)) for _ in range(6)))
        await _admin(database_url, migration.create_role(name))  # and again, afterwards
        engine = make_engine(database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                found = await conn.scalar(
                    text("SELECT count(*) FROM pg_roles WHERE rolname = :n AND NOT rolcanlogin"),
                    {"n": name},
                )
        finally:
            await engine.dispose()
        assert found == 1
    finally:
        await _admin(database_url, f"DROP ROLE IF EXISTS {name}")


async def test_downgrade_revokes_and_upgrade_grants_again(
    database_url: str, app_engine: AsyncEngine
) -> None:
    async def can_read() -> bool:
        try:
            async with app_engine.connect() as conn:
                await conn.execute(text("SELECT count(*) FROM saga_instances"))
        except DBAPIError as exc:
            assert getattr(exc.orig, "sqlstate", None) == INSUFFICIENT_PRIVILEGE
            return False
        return True

    assert await can_read()
    await downgrade(database_url, "0008")
    await app_engine.dispose()
    assert not await can_read()
    await upgrade(database_url)
    await app_engine.dispose()
    assert await can_read()
