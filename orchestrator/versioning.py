"""Definition versions across deploys: which versions unfinished instances still need, what a
process that lacks one is told, and the overview `saga definitions` prints.

An instance finishes on the version it started with (the engine looks its definition up by
the version recorded on it), so every process must keep loading each version that unfinished
instances run on. New starts take the newest loaded version unless they pin one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from orchestrator.errors import MissingDefinition
from orchestrator.ports import RegisteredDefinition, VersionInUse
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus

# Statuses after which a saga is over. From any other one (paused and parked sagas included:
# an operator may resume, retry or skip them) it can still run steps or compensations of its
# version. So can a completed child saga whose parent is unfinished: the parent may still
# undo it (SAGA_MOVES); the stores count those too.
ENDED = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.CANCELLED})
UNFINISHED = frozenset(SagaStatus) - ENDED


def missing(in_use: Iterable[VersionInUse], registry: Registry) -> list[VersionInUse]:
    """The versions in use that `registry` does not load."""
    return [v for v in in_use if not registry.loads(v.name, v.version)]


def require_loaded(in_use: Iterable[VersionInUse], registry: Registry) -> None:
    """Raise MissingDefinition naming every version in use that `registry` lacks.

    Checked at start-up because a process without the version would fail every reply, timer
    and operator action of those instances, and keep failing them until their messages were
    dead-lettered.
    """
    lacking = missing(in_use, registry)
    if lacking:
        raise MissingDefinition("; ".join(describe_missing(v) for v in lacking))


def describe_missing(version: VersionInUse) -> str:
    instances = "instance" if version.unfinished == 1 else "instances"
    return (
        f"saga {version.name!r} v{version.version} has {version.unfinished} unfinished "
        f"{instances} but this process does not load it: keep the v{version.version} "
        "definition in your saga modules until they finish (see `saga definitions`)"
    )


@dataclass(frozen=True)
class DefinitionStatus:
    """One saga version as `saga definitions` shows it."""

    name: str
    version: int
    # As registered in the database; None when no `saga run` has registered it yet.
    fingerprint: str | None
    registered_at: datetime | None
    unfinished: int
    # Of this process's definition; None when its modules do not define this version.
    loaded_fingerprint: str | None

    @property
    def loaded(self) -> bool:
        return self.loaded_fingerprint is not None

    @property
    def changed(self) -> bool:
        """Loaded here with other steps than registered: `saga run` would refuse to start."""
        return (
            self.fingerprint is not None
            and self.loaded_fingerprint is not None
            and self.fingerprint != self.loaded_fingerprint
        )

    @property
    def needed(self) -> bool:
        """Unfinished instances run on it but this process does not load it."""
        return self.unfinished > 0 and not self.loaded

    def in_use(self) -> VersionInUse:
        return VersionInUse(self.name, self.version, self.unfinished)


def overview(
    definitions: Iterable[RegisteredDefinition],
    in_use: Iterable[VersionInUse],
    registry: Registry,
) -> list[DefinitionStatus]:
    """Every version that is registered, in use, or loaded by `registry`, by name then
    version. In use without a registration is listed too: the database says so, whatever
    happened to the definitions table."""
    registered = {(d.name, d.version): d for d in definitions}
    counts = {(v.name, v.version): v.unfinished for v in in_use}
    loaded = {(s.name, s.version): s.fingerprint for s in registry.all()}
    rows = []
    for name, version in sorted(registered.keys() | counts.keys() | loaded.keys()):
        row = registered.get((name, version))
        rows.append(
            DefinitionStatus(
                name=name,
                version=version,
                fingerprint=row.fingerprint if row else None,
                registered_at=row.registered_at if row else None,
                unfinished=counts.get((name, version), 0),
                loaded_fingerprint=loaded.get((name, version)),
            )
        )
    return rows
