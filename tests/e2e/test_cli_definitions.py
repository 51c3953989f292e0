"""`saga definitions` and the start-up refusal of `saga run` as an operator meets them: the CLI
as a subprocess, configured by SAGA_* variables, on a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from adapters.postgres.store import PostgresStore
from adapters.rabbitmq.topology import Topology
from orchestrator import machine
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus
from tests.fixtures.ticket_sagas import ticket, ticket_v1

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BOTH_VERSIONS = "tests.fixtures.ticket_sagas"
V2_ONLY = "tests.fixtures.ticket_v2_only"
REFUSAL = (
    "saga 'ticket' v1 has 2 unfinished instances but this process does not load it: keep the "
    "v1 definition in your saga modules until they finish (see `saga definitions`)"
)


@pytest.fixture
async def env(
    pg_store: PostgresStore, database_url: str, topology: Topology, amqp_url: str
) -> dict[str, str]:
    """A database where `ticket` v1 is registered and has three instances: one running, one
    paused (unfinished too: an operator resumes it) and one completed."""
    [record] = Registry([ticket_v1]).records()
    await pg_store.register(record)
    now = datetime.now(UTC)
    running, paused, done = (
        machine.start(ticket_v1, saga_id=uuid4(), key=f"t-{n}", input={"ticket_id": "x"}, now=now)
        for n in range(3)
    )
    async with pg_store.transaction() as tx:
        assert await tx.insert(running.state)
        assert await tx.insert(
            replace(paused.state, status=SagaStatus.PAUSED, resume_status=SagaStatus.RUNNING)
        )
        assert await tx.insert(replace(done.state, status=SagaStatus.COMPLETED))
    return {
        "SAGA_DATABASE_URL": database_url,
        "SAGA_AMQP_URL": amqp_url,
        # Should `run` not refuse, it would declare its queues under the test's own prefix.
        "SAGA_AMQP_PREFIX": topology.prefix,
        "SAGA_LOG_FORMAT": "json",
    }


def saga(env: dict[str, str], modules: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args],
        env={**os.environ, **env, "SAGA_MODULES": modules},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_definitions_lists_versions_with_their_unfinished_instances(env: dict[str, str]) -> None:
    listed = saga(env, BOTH_VERSIONS, "definitions", "--json")
    assert listed.returncode == 0, listed.stderr
    v1, v2 = json.loads(listed.stdout)
    assert v1["registered_at"] is not None
    assert {**v1, "registered_at": None} == {
        "saga": "ticket",
        "version": 1,
        "fingerprint": ticket_v1.fingerprint,
        "registered_at": None,
        "unfinished": 2,
        "loaded": True,
        "changed": False,
    }
    assert v2 == {
        "saga": "ticket",
        "version": 2,
        "fingerprint": None,  # no `saga run` has registered it yet
        "registered_at": None,
        "unfinished": 0,
        "loaded": True,
        "changed": False,
    }
    assert listed.stderr == ""

    human = saga(env, BOTH_VERSIONS, "definitions")
    assert human.returncode == 0, human.stderr
    header, _, row1, row2 = human.stdout.splitlines()
    assert header.split() == [
        "saga",
        "version",
        "fingerprint",
        "registered",
        "(UTC)",
        "unfinished",
        "loaded",
        "here",
    ]
    assert row1.split()[:3] == ["ticket", "1", ticket_v1.fingerprint[:12]]
    assert row1.split()[-2:] == ["2", "yes"]
    assert row2.split() == ["ticket", "2", "-", "not", "yet", "0", "yes"]
    assert ticket.fingerprint != ticket_v1.fingerprint


def test_definitions_warns_when_these_modules_lack_a_version_in_use(env: dict[str, str]) -> None:
    human = saga(env, V2_ONLY, "definitions")
    assert human.returncode == 0, human.stderr
    assert human.stdout.splitlines()[2].split()[-2:] == ["2", "no"]
    assert human.stderr.strip() == f"warning: `saga run` would refuse to start: {REFUSAL}"


def test_run_without_a_version_in_use_refuses_to_start_and_says_which(
    env: dict[str, str],
) -> None:
    refused = saga(env, V2_ONLY, "run")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == f"error: {REFUSAL}"
    assert "Traceback" not in refused.stderr + refused.stdout
