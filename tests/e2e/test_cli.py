"""The `saga` CLI as a user runs it: a subprocess, configured by SAGA_* variables, against
the real database and broker, with `saga run` and the example shop as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.postgres.database import make_engine
from adapters.postgres.schema import scripts
from adapters.rabbitmq.topology import Topology
from adapters.settings import Settings
from examples.demo import CUSTOMERS, STOCK, wait_for_consumers
from examples.processes import Processes
from examples.shop import schema
from tests.fixtures.databases import drop_database
from tests.fixtures.polling import eventually
from tests.fixtures.settings import process_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ORDER = {
    "order_id": "cli-1",
    "customer_id": "cust-ok",
    "amount": "12.00",
    "items": [{"sku": "SKU-BOOK", "qty": 1}],
}


@pytest.fixture
def env(database_url: str, topology: Topology, amqp_url: str) -> dict[str, str]:
    return process_env(database_url, amqp_url, topology.prefix, SHOP_DATABASE_URL=database_url)


def saga(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def ready(env: dict[str, str], topology: Topology, queue: str) -> None:
    """Wait until the orchestrator and the shop consume, and give the shop its tables and
    customers (the demo seeds them; here the test does)."""
    settings = Settings(
        database_url=env["SAGA_DATABASE_URL"],
        amqp_url=env["SAGA_AMQP_URL"],
        amqp_prefix=topology.prefix,
    )
    await wait_for_consumers(settings, ["saga.requests", queue])
    shop = make_engine(env["SHOP_DATABASE_URL"], pool_size=1)
    await schema.create(shop)
    await schema.seed(shop, CUSTOMERS, STOCK)
    await shop.dispose()


@pytest.fixture
def running(env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(env=env, log_dir=tmp_path)
    procs.start_orchestrator()
    procs.start_shop()
    yield procs
    procs.stop_all()


async def test_migrate_creates_a_missing_database_and_says_what_it_did(
    env: dict[str, str], database_url: str
) -> None:
    name = f"saga_cli_{uuid.uuid4().hex[:8]}"
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    revisions = [s.revision for s in reversed(list(scripts().walk_revisions()))]
    head = revisions[-1]
    try:
        done = saga({**env, "SAGA_DATABASE_URL": url}, "migrate")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            f"created database {name}",
            f"applied {revisions[0]} ... {head} ({len(revisions)} revisions), now at {head}",
        ]
        again = saga({**env, "SAGA_DATABASE_URL": url}, "migrate")  # harmless
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == [f"already at {head}, nothing to do"]
    finally:
        await drop_database(url)


async def test_start_status_list_cancel(
    env: dict[str, str], running: Processes, topology: Topology
) -> None:
    await ready(env, topology, "commands.customers")

    started = saga(env, "start", "order", "--key", "cli-k1", "--input", json.dumps(ORDER))
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "cli-k1"

    async def completed() -> dict[str, Any] | None:
        out = saga(env, "status", "cli-k1", "--json")
        if out.returncode != 0:
            return None
        doc: dict[str, Any] = json.loads(out.stdout)
        return doc if doc["status"] == "completed" else None

    doc = await eventually(completed, timeout=30, message="cli-k1 completed")
    # Order v4: a small order skips the fraud review.
    assert [s["status"] for s in doc["steps"]] == ["succeeded"] * 2 + ["skipped"] + [
        "succeeded"
    ] * 2

    human = saga(env, "status", "cli-k1")
    assert "charge_payment" in human.stdout and "succeeded" in human.stdout

    listed = saga(env, "list", "--status", "completed", "--json")
    assert [d["key"] for d in json.loads(listed.stdout)] == ["cli-k1"]

    refused = saga(env, "cancel", "cli-k1", "--reason", "too late")
    assert refused.returncode == 1
    assert "past the pivot" in refused.stderr or "already completed" in refused.stderr

    typo = saga(env, "cancel", "not-started-yet")
    assert typo.returncode == 3 and "no saga has key 'not-started-yet'" in typo.stderr
    held = saga(env, "cancel", "not-started-yet", "--hold")
    assert held.returncode == 0 and "held" in held.stdout

    missing = saga(env, "status", str(uuid.uuid4()))
    assert missing.returncode == 3 and "no saga" in missing.stderr  # as over the API


def test_bad_input_gets_a_clear_error(env: dict[str, str]) -> None:
    done = saga(env, "start", "order", "--input", "{oops")
    assert done.returncode == 2
    assert "not valid JSON" in done.stderr


async def test_operator_pause_history_refusal_resume(
    env: dict[str, str], tmp_path: Path, topology: Topology
) -> None:
    # The shop's inventory service starts only once the saga is paused: its stock reservation
    # stays in flight however long the CLI processes take on a loaded machine.
    procs = Processes(env=env, log_dir=tmp_path)
    procs.start_orchestrator()
    procs.start_shop(services=["customers", "payments", "notifications"])
    try:
        await ready(env, topology, "commands.customers")

        order = {**ORDER, "order_id": "cli-2"}
        assert (
            saga(env, "start", "order", "--key", "cli-k2", "--input", json.dumps(order)).returncode
            == 0
        )

        async def status_is(wanted: str) -> bool:
            out = saga(env, "status", "cli-k2", "--json")
            return out.returncode == 0 and json.loads(out.stdout)["status"] == wanted

        await eventually(lambda: status_is("running"), timeout=30, message="cli-k2 running")
        paused = saga(env, "pause", "cli-k2", "--reason", "check the address", "--who", "bob")
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.strip().endswith("paused")

        refused = saga(env, "retry", "cli-k2", "--reason", "wrong button")
        assert refused.returncode == 1
        assert "only a failed" in refused.stderr and "paused" in refused.stderr
        no_reason = saga(env, "resume", "cli-k2")
        assert no_reason.returncode == 2 and "--reason" in no_reason.stderr

        history = json.loads(saga(env, "history", "cli-k2", "--json").stdout)
        [pause] = [h for h in history if h["event"] == "saga_paused"]
        assert pause["actor"] == "operator:bob"
        assert pause["detail"] == {"reason": "check the address"}

        procs.start_shop("inventory", services=["inventory"])
        resumed = saga(env, "resume", "cli-k2", "--reason", "address ok", "--who", "bob")
        assert resumed.returncode == 0, resumed.stderr
        await eventually(lambda: status_is("completed"), timeout=30, message="cli-k2 completed")
        human = saga(env, "history", "cli-k2")
        assert "saga_resumed" in human.stdout and "operator:bob" in human.stdout
    finally:
        procs.stop_all()
