"""How `saga migrate` applies revisions: one transaction each under a session-level lock, so
several migrators can start at once, and a revision can build an index CONCURRENTLY (which
PostgreSQL refuses inside a transaction) without blocking writes to a big table."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

import migrations
from adapters.postgres.database import make_engine
from adapters.postgres.migrate import check, downgrade, upgrade
from tests.fixtures.databases import drop_database

SCRATCH = '''"""A scratch revision for the test: an index built CONCURRENTLY."""

from alembic import op

revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY ix_scratch_key ON saga_instances (key, name)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY ix_scratch_key")
'''


def _head() -> str:
    names = sorted(p.name for p in (migrations.HERE / "versions").glob("0*.py"))
    return names[-1].split("_", 1)[0]


async def test_several_migrators_at_once_build_the_schema_once(database_url: str) -> None:
    url = make_url(database_url)
    fresh = url.set(database=f"{url.database}_m").render_as_string(hide_password=False)
    try:
        await asyncio.gather(*(upgrade(fresh) for _ in range(3)))
        await check(fresh)
        engine = make_engine(fresh, pool_size=1)
        try:
            async with engine.connect() as conn:
                version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
                # Each revision committed on its own; the session lock was given back. Only
                # this database's: other tests migrate theirs on the same server meanwhile.
                locks = await conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database"
                        " = (SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                )
        finally:
            await engine.dispose()
        assert version == _head()
        assert locks == 0
    finally:
        await drop_database(fresh)


async def test_a_revision_can_build_an_index_concurrently(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "migrations"
    shutil.copytree(migrations.HERE, here, ignore=shutil.ignore_patterns("__pycache__"))
    (here / "versions" / "9999_scratch_concurrently.py").write_text(
        SCRATCH.replace("{head}", _head())
    )
    monkeypatch.setattr(migrations, "HERE", here)
    await upgrade(database_url)
    engine = make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            valid = await conn.scalar(
                text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE c.relname = 'ix_scratch_key'"
                )
            )
            version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        assert valid is True and version == "9999"
        await downgrade(database_url, _head())
        async with engine.connect() as conn:
            gone = await conn.scalar(text("SELECT to_regclass('ix_scratch_key')"))
        assert gone is None
    finally:
        await engine.dispose()
