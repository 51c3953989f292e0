"""`saga cancel` on the database as an operator types it: a key no saga has is refused (a
typo, most likely) unless --hold says the start is still to come. What the command says is
on stdout, its log lines on stderr. The same over --url: tests/http/test_cli_api.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.topology import Topology

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HELD = "no saga has key {!r} yet: the cancel is held and applies when a start with this key arrives"


@pytest.fixture
def env(database_url: str, topology: Topology, amqp_url: str) -> dict[str, str]:
    return {
        "SAGA_DATABASE_URL": database_url,
        "SAGA_AMQP_URL": amqp_url,
        "SAGA_AMQP_PREFIX": topology.prefix,
    }


def saga(
    env: dict[str, str], *args: str, log_format: str | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **env}
    environ.pop("SAGA_LOG_FORMAT", None)
    if log_format is not None:
        environ["SAGA_LOG_FORMAT"] = log_format
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def held_cancel(store: PostgresStore, key: str) -> str | None:
    """The reason of a cancel held for an `order` start with this key (taken: test only)."""
    async with store.transaction() as tx:
        return await tx.take_held_cancel("order", key)


async def test_a_cancel_by_an_unknown_key_is_refused_and_holds_nothing(
    env: dict[str, str], pg_store: PostgresStore
) -> None:
    done = saga(env, "cancel", "trip-nonexistent")
    assert (done.returncode, done.stdout) == (3, ""), done.stderr
    assert done.stderr.splitlines() == [
        "error: no saga has key 'trip-nonexistent', and no start with it waits for a semantic "
        "lock: nothing to cancel; check the key, or pass --hold to hold the cancel for a start "
        "still to come"
    ]
    assert await held_cancel(pg_store, "trip-nonexistent") is None


async def test_hold_keeps_the_cancel_for_its_start_with_output_and_logs_apart(
    env: dict[str, str], pg_store: PostgresStore
) -> None:
    done = saga(env, "cancel", "trip-later", "--hold", "--reason", "changed mind")
    assert done.returncode == 0, done.stderr
    assert done.stdout == HELD.format("trip-later") + "\n"
    [logged] = done.stderr.splitlines()  # console format, not JSON
    assert not logged.startswith("{")
    assert "saga_cancel_held" in logged and "key=trip-later" in logged
    assert await held_cancel(pg_store, "trip-later") == "changed mind"

    as_json = saga(env, "cancel", "trip-json", "--hold", log_format="json")
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout == HELD.format("trip-json") + "\n"
    [logged] = as_json.stderr.splitlines()
    assert json.loads(logged)["event"] == "saga_cancel_held"
