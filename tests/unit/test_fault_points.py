"""SAGA_FAULT specs are checked against the process's role: a point the process never reaches
would never crash it, and a crash test armed with it would pass without its crash."""

from __future__ import annotations

import pytest

from adapters.faults import POINTS, REACHES, Role, fault_hook

ROLES: tuple[Role, ...] = ("orchestrator", "participant", "starter")


def test_each_point_is_reached_by_exactly_one_role() -> None:
    owners = {point: [role for role in ROLES if point in REACHES[role]] for point in POINTS}
    assert {point: len(roles) for point, roles in owners.items()} == dict.fromkeys(POINTS, 1)


@pytest.mark.parametrize("role", ROLES)
def test_a_role_arms_its_own_points(role: Role) -> None:
    for point in REACHES[role]:
        assert fault_hook(f"{point}@2", role) is not None


@pytest.mark.parametrize(
    ("spec", "role"),
    [
        ("after_handler_before_reply", "orchestrator"),
        ("starter_after_commit_before_publish@3", "orchestrator"),
        ("after_commit_before_publish@15", "participant"),
        ("after_commit_before_ack", "participant"),
        ("after_publish_before_outbox_delete", "starter"),
        ("after_handler_before_reply@4", "starter"),
    ],
)
def test_a_point_the_role_never_reaches_is_refused_naming_the_role_and_its_points(
    spec: str, role: Role
) -> None:
    with pytest.raises(ValueError, match="never reaches") as raised:
        fault_hook(spec, role)
    message = str(raised.value)
    assert f"a {role} process never reaches {spec.partition('@')[0]!r}" in message
    assert message.endswith(f"a {role} reaches {', '.join(sorted(REACHES[role]))}"), message


def test_no_spec_arms_nothing() -> None:
    assert fault_hook(None, "orchestrator") is None
    assert fault_hook("", "participant") is None


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("after_commit_before_pubish", "unknown fault point"),
        ("after_commit_before_ack@0", "must be >= 1"),
        ("after_commit_before_ack@x", "whole number"),
    ],
)
def test_a_bad_spec_is_refused(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        fault_hook(spec, "orchestrator")


def test_the_hook_kills_at_the_nth_time_its_point_is_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kills: list[int] = []
    monkeypatch.setattr("adapters.faults.os.kill", lambda _pid, sig: kills.append(sig))
    hit = fault_hook("after_commit_before_ack@3", "orchestrator")
    assert hit is not None
    for name in ("after_commit_before_ack", "after_commit_before_publish"):
        hit(name)
    hit("after_commit_before_ack")
    assert kills == []
    hit("after_commit_before_ack")
    assert len(kills) == 1
