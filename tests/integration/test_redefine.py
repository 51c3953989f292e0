"""A saga version whose definition changed, on real PostgreSQL: refused at start-up saying
what changed; replaced with SAGA_DEV_REDEFINE when nothing runs on it, refused even then while
an instance does."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from adapters.participant import Participant
from adapters.rabbitmq.topology import Topology
from adapters.runtime import Orchestrator
from orchestrator import DefinitionConflict, Saga
from orchestrator.messages import Command
from orchestrator.registry import Registry
from tests.integration.harness import running_system
from tests.integration.hosted import host


class Note(BaseModel):
    note_id: str


def note(timeout: float) -> Saga:
    saga = Saga("note", version=1, input=Note, timeout=timeout)
    saga.remote("write", command="notes.write", compensation="notes.erase")
    return saga


async def test_a_changed_version_is_refused_with_what_changed_or_replaced_in_dev_mode(
    database_url: str, topology: Topology, amqp_url: str
) -> None:
    async with running_system(database_url, topology, amqp_url, [note(5)]) as system:
        changed = Registry([note(9)])
        with pytest.raises(DefinitionConflict) as refused:
            await Orchestrator(system.settings, registry=changed).start()
        assert "step 'write': timeout 5 -> 9" in str(refused.value)

        # An unfinished instance runs on v1 (nobody consumes notes.write): even the dev mode
        # refuses, since that instance would go on under steps it did not start with.
        await system.start_order("n-1", {"note_id": "n1"}, saga="note")
        await system.wait_status("n-1", "running")
        dev = system.settings.model_copy(update={"dev_redefine": True})
        with pytest.raises(DefinitionConflict):
            await Orchestrator(dev, registry=changed).start()

        notes = Participant("notes")

        @notes.handler("notes.write")
        async def write(cmd: Command) -> dict[str, str]:
            return {"written": cmd.payload["note_id"]}

        await host(system, notes)  # the instance finishes
        await system.wait_status("n-1", "completed")
        with capture_logs() as logs:
            replacing = Orchestrator(dev, registry=changed)
            await replacing.start()
            await replacing.stop()
        [replaced] = [e for e in logs if e["event"] == "definition_replaced"]
        assert (replaced["saga"], replaced["version"]) == ("note", 1)
        [listed] = await system.store.definitions()
        assert listed.fingerprint == note(9).fingerprint
