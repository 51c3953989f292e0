"""Versions across deploys, without a database: which statuses keep a version in use, the
start-up refusal's message, the overview `saga definitions` prints, and two versions of one
saga in one module."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.errors import DefinitionError, MissingDefinition
from orchestrator.ports import RegisteredDefinition, VersionInUse
from orchestrator.registry import Registry, load_modules
from orchestrator.state import SAGA_MOVES, SagaStatus
from orchestrator.versioning import ENDED, UNFINISHED, DefinitionStatus, overview, require_loaded
from tests.fixtures import ticket_sagas
from tests.fixtures.ticket_sagas import ticket, ticket_v1

AT = datetime(2030, 1, 1, tzinfo=UTC)


def test_only_completed_compensated_and_cancelled_sagas_are_over() -> None:
    assert {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED} == ENDED
    # Parked and paused sagas wait for an operator, who may move them on: they still count.
    assert {
        SagaStatus.RUNNING,
        SagaStatus.COMPENSATING,
        SagaStatus.PAUSED,
        SagaStatus.FAILED,
    } == UNFINISHED
    assert all(SAGA_MOVES[status] for status in UNFINISHED), "each can still move on"


def test_one_module_may_hold_two_versions_of_a_saga() -> None:
    registry = load_modules([ticket_sagas.__name__])
    assert sorted((s.name, s.version) for s in registry.all()) == [("ticket", 1), ("ticket", 2)]
    assert registry.get("ticket") is ticket  # new starts take the newest
    assert registry.get("ticket", 1) is ticket_v1  # or the pinned one
    assert registry.loads("ticket", 1)
    assert not registry.loads("ticket", 3)


def test_the_same_version_under_two_names_in_a_module_is_one_saga() -> None:
    registry = Registry([ticket, ticket_v1, ticket])  # e.g. `latest = ticket` in a module
    assert len(registry.all()) == 2


def test_start_up_passes_when_every_version_in_use_is_loaded() -> None:
    in_use = [VersionInUse("ticket", 1, 3), VersionInUse("ticket", 2, 1)]
    require_loaded(in_use, Registry([ticket_v1, ticket]))
    require_loaded([], Registry([ticket]))


def test_start_up_refusal_names_each_missing_version_and_what_to_do() -> None:
    in_use = [
        VersionInUse("order", 3, 1),
        VersionInUse("ticket", 1, 12),
        VersionInUse("ticket", 2, 5),
    ]
    with pytest.raises(MissingDefinition) as refused:
        require_loaded(in_use, Registry([ticket]))
    assert str(refused.value) == (
        "saga 'order' v3 has 1 unfinished instance but this process does not load it: keep the "
        "v3 definition in your saga modules until they finish (see `saga definitions`); "
        "saga 'ticket' v1 has 12 unfinished instances but this process does not load it: keep "
        "the v1 definition in your saga modules until they finish (see `saga definitions`)"
    )
    assert isinstance(refused.value, DefinitionError), "the CLI reports it as a definition error"


def test_overview_joins_registrations_use_and_what_this_process_loads() -> None:
    registered = [
        RegisteredDefinition("ticket", 1, ticket_v1.fingerprint, AT),
        RegisteredDefinition("ticket", 2, "f" * 64, AT),  # the process's v2 has other steps
        RegisteredDefinition("audit", 1, "a" * 64, AT),
    ]
    in_use = [VersionInUse("ticket", 1, 4), VersionInUse("order", 1, 2)]
    rows = overview(registered, in_use, Registry([ticket_v1, ticket]))
    assert rows == [
        DefinitionStatus("audit", 1, "a" * 64, AT, 0, None),
        # In use but never registered (a table emptied by hand): the instances still say so.
        DefinitionStatus("order", 1, None, None, 2, None),
        DefinitionStatus("ticket", 1, ticket_v1.fingerprint, AT, 4, ticket_v1.fingerprint),
        DefinitionStatus("ticket", 2, "f" * 64, AT, 0, ticket.fingerprint),
    ]
    assert [r.loaded for r in rows] == [False, False, True, True]
    assert [r.needed for r in rows] == [False, True, False, False]
    assert [r.changed for r in rows] == [False, False, False, True]
    assert rows[1].in_use() == VersionInUse("order", 1, 2)


def test_a_loaded_version_nobody_registered_yet_is_listed() -> None:
    [row] = overview([], [], Registry([ticket]))
    assert row == DefinitionStatus("ticket", 2, None, None, 0, ticket.fingerprint)
    assert row.loaded and not row.changed and not row.needed
