"""A new user's first mistakes as `saga` meets them at start-up: a database never migrated
(or a release behind), a bad setting, a saga module that does not import. Each is one line
on stderr saying what to do, exit 2, no traceback. The CLI as a subprocess, as a user runs
it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import make_url, text

from adapters.postgres.database import ensure_database, single_use_engine
from adapters.postgres.migrate import upgrade
from adapters.postgres.schema import scripts
from adapters.rabbitmq.topology import Topology
from tests.fixtures.databases import drop_database
from tests.fixtures.names import owned_name
from tests.fixtures.postgres import SERVER_URL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HEAD = scripts().get_current_head()

BAD_MODULE = (
    "error: cannot import saga module 'sagas.nope': No module named 'sagas.nope'; check "
    "SAGA_MODULES"
)


def saga(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        env={**os.environ, "SAGA_HTTP_BIND": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def refusal(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines a command refused with: exit 2, nothing on stdout, no traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""
    return done.stderr.splitlines()


@pytest.fixture
async def new_database() -> AsyncIterator[str]:
    """The URL of a database that does not exist yet; dropped afterwards."""
    url = SERVER_URL.set(database=owned_name("saga_new"))
    rendered = url.render_as_string(hide_password=False)
    try:
        yield rendered
    finally:
        await drop_database(rendered)


def shown(url: str) -> str:
    """The URL as the messages show it: without its password."""
    return make_url(url).render_as_string(hide_password=True)


async def tables(url: str) -> int:
    db = single_use_engine(url)
    try:
        async with db.connect() as conn:
            count = await conn.scalar(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            )
    finally:
        await db.dispose()
    return int(count or 0)


async def test_a_database_never_migrated_is_one_line_saying_to_migrate(
    new_database: str, amqp_url: str, topology: Topology
) -> None:
    await ensure_database(new_database)  # there, and empty
    env = {
        "SAGA_DATABASE_URL": new_database,
        "SAGA_AMQP_URL": amqp_url,
        "SAGA_AMQP_PREFIX": topology.prefix,
    }
    where = f"the database at {shown(new_database)}"
    expected = f"error: {where} has no saga schema: run `saga migrate`"
    for command in (["run"], ["status", "k-1"], ["cancel", "k-1"]):
        assert refusal(saga(env, *command)) == [expected], command
    assert await tables(new_database) == 0  # nothing half-made


async def test_a_database_a_release_behind_says_which_revision_and_migrate_catches_up(
    new_database: str, amqp_url: str, topology: Topology
) -> None:
    assert HEAD is not None
    previous = scripts().get_revision(HEAD).down_revision
    assert isinstance(previous, str)
    await upgrade(new_database, previous)
    env = {
        "SAGA_DATABASE_URL": new_database,
        "SAGA_AMQP_URL": amqp_url,
        "SAGA_AMQP_PREFIX": topology.prefix,
    }
    assert refusal(saga(env, "run")) == [
        f"error: the database at {shown(new_database)} is at revision {previous}, this "
        f"release needs {HEAD}: run `saga migrate`"
    ]
    migrated = saga(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == f"applied {HEAD} (1 revision), now at {HEAD}\n"
    listed = saga(env, "list", "--json")
    assert (listed.returncode, listed.stdout.strip()) == (0, "[]"), listed.stderr


def test_each_bad_setting_is_one_line() -> None:
    integer = "Input should be a valid integer, unable to parse string as an integer"
    for command in ("run", "worker", "list"):
        assert refusal(saga({"SAGA_PREFETCH": "abc"}, command)) == [
            f"error: SAGA_PREFETCH='abc': {integer}"
        ], command
    assert refusal(saga({"SAGA_PREFETCH": "abc", "SAGA_BATCH_SIZE": "0"}, "run")) == [
        f"error: SAGA_PREFETCH='abc': {integer}",
        "error: SAGA_BATCH_SIZE='0': Input should be greater than or equal to 1",
    ]


def test_a_saga_module_that_does_not_import_is_one_line() -> None:
    for command in ("run", "worker", "definitions"):
        assert refusal(saga({"SAGA_MODULES": "sagas.nope"}, command)) == [BAD_MODULE], command
