"""The SagaStore's registry of definitions, for the fake and the Postgres adapter: what each
process registers at startup, and which versions unfinished sagas still run on."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from uuid import uuid4

import pytest

from orchestrator.errors import DefinitionConflict
from orchestrator.messages import ParentRef
from orchestrator.ports import DefinitionRecord, Registration, SagaStore, VersionInUse
from orchestrator.state import SagaStatus
from tests.contract.samples import started
from tests.contract.stores import InMemory, OnPostgres, StoreSuite


class DefinitionContract(StoreSuite):
    """`register`, `definitions` and `versions_in_use` of every SagaStore."""

    async def test_register_is_idempotent_and_refuses_changed_steps(self, store: SagaStore) -> None:
        record = DefinitionRecord("order", 1, "abc123", {"steps": [{"name": "reserve"}]})
        assert await store.register(record) == Registration.NEW
        assert await store.register(record) == Registration.UNCHANGED
        other = replace(record, version=2, fingerprint="def456")
        assert await store.register(other) == Registration.NEW
        changed = replace(
            record,
            fingerprint="def456",
            document={"steps": [{"name": "reserve", "timeout": 5}, {"name": "ship"}]},
        )
        with pytest.raises(DefinitionConflict) as refused:
            await store.register(changed)
        text_ = str(refused.value)
        assert "'order'" in text_
        assert "version 1" in text_
        assert "bump the version" in text_
        # What changed, not two fingerprints.
        assert refused.value.changes == ["step 'ship' added", "step 'reserve': timeout unset -> 5"]
        assert "SAGA_DEV_REDEFINE" in text_

    async def test_a_changed_version_nothing_runs_on_is_replaced_when_asked(
        self, store: SagaStore
    ) -> None:
        state = started()
        record = DefinitionRecord(state.name, state.version, "abc123", {"steps": []})
        assert await store.register(record) == Registration.NEW
        changed = replace(record, fingerprint="def456", document={"steps": [{"name": "a"}]})
        # An unfinished instance runs on it: refused even when asked.
        await self.insert(store, state)
        with pytest.raises(DefinitionConflict):
            await store.register(changed, replace_unused=True)
        done = replace(state, status=SagaStatus.COMPLETED, revision=1)
        await self.save(store, state, done)
        with pytest.raises(DefinitionConflict):
            await store.register(changed)  # not asked
        assert await store.register(changed, replace_unused=True) == Registration.REPLACED
        assert await store.register(changed) == Registration.UNCHANGED
        [listed] = await store.definitions()
        assert listed.fingerprint == "def456"

    async def test_definitions_lists_every_registration_by_name_then_version(
        self, store: SagaStore
    ) -> None:
        assert await store.definitions() == []
        for name, version in (("order", 2), ("invoice", 1), ("order", 1)):
            await store.register(DefinitionRecord(name, version, f"fp-{name}-{version}", {}))
        listed = await store.definitions()
        assert [(d.name, d.version, d.fingerprint) for d in listed] == [
            ("invoice", 1, "fp-invoice-1"),
            ("order", 1, "fp-order-1"),
            ("order", 2, "fp-order-2"),
        ]
        assert all(d.registered_at.utcoffset() == timedelta(0) for d in listed)

    async def test_versions_in_use_counts_every_instance_that_can_still_move(
        self, store: SagaStore
    ) -> None:
        assert await store.versions_in_use() == []
        # One order v1 instance in each status; only completed, compensated and cancelled
        # ones are over. Paused and parked (failed) ones still count: an operator moves them on.
        v1 = [
            replace(
                started(f"v1-{status}"),
                version=1,
                status=status,
                resume_status=SagaStatus.RUNNING if status == SagaStatus.PAUSED else None,
            )
            for status in SagaStatus
        ]
        v2 = [replace(started(f"v2-{n}"), version=2) for n in range(3)]
        over = replace(started("i", name="invoice"), version=1, status=SagaStatus.CANCELLED)
        await self.insert(store, *v1, *v2, over)
        assert await store.versions_in_use() == [
            VersionInUse("order", 1, 4),
            VersionInUse("order", 2, 3),
        ]
        done = replace(v2[0], status=SagaStatus.COMPLETED, revision=v2[0].revision + 1)
        await self.save(store, v2[0], done)
        assert await store.versions_in_use() == [
            VersionInUse("order", 1, 4),
            VersionInUse("order", 2, 2),
        ]

    async def test_a_completed_child_counts_while_its_parent_may_undo_it(
        self, store: SagaStore
    ) -> None:
        parent = started("p")
        ref = ParentRef(saga_id=parent.saga_id, step="ship", command_id=uuid4())
        child = replace(started("c", name="shipment"), status=SagaStatus.COMPLETED, parent=ref)
        await self.insert(store, parent, child)
        assert VersionInUse("shipment", child.version, 1) in await store.versions_in_use()
        loaded = await store.get(child.saga_id)
        assert loaded is not None and loaded.parent == ref
        done = replace(parent, status=SagaStatus.COMPLETED, revision=parent.revision + 1)
        await self.save(store, parent, done)
        assert await store.versions_in_use() == []


class TestMemoryDefinitions(InMemory, DefinitionContract):
    pass


class TestPostgresDefinitions(OnPostgres, DefinitionContract):
    pass
