"""The set of saga definitions a process knows, loaded from Python modules."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import DefinitionError, InvalidInput, UnknownSaga
from orchestrator.ports import DefinitionRecord, WaitingFor
from orchestrator.saga import Saga
from orchestrator.search_fields import SearchKind
from orchestrator.search_filters import DeclaredFields, SearchCondition, conditions


class Registry:
    def __init__(self, sagas: Iterable[Saga] = ()) -> None:
        self._by_version: dict[tuple[str, int], Saga] = {}
        for saga in sagas:
            self.add(saga)
        self.check_children()

    def add(self, saga: Saga) -> None:
        saga.validate()
        existing = self._by_version.get((saga.name, saga.version))
        if existing is not None and existing is not saga:
            raise DefinitionError(
                f"saga {saga.name!r} v{saga.version} is defined twice; bump one version"
            )
        self._by_version[(saga.name, saga.version)] = saga

    def get(self, name: str, version: int | None = None) -> Saga:
        if version is None:
            versions = [v for (n, v) in self._by_version if n == name]
            if not versions:
                raise UnknownSaga(
                    f"no saga named {name!r}; known: {', '.join(self.names()) or 'none'}"
                )
            version = max(versions)
        saga = self._by_version.get((name, version))
        if saga is None:
            raise UnknownSaga(f"saga {name!r} has no version {version} loaded in this process")
        return saga

    def validate_start(
        self, name: str, version: int | None, input: Mapping[str, Any]
    ) -> tuple[Saga, dict[str, Any]]:
        """The definition a start names and its input as validated (JSON-ready); raises
        UnknownSaga or InvalidInput saying what is wrong. The engine checks every start with
        it, and `saga start` before it publishes one."""
        definition = self.get(name, version)
        try:
            validated = definition.input.model_validate(input)
        except ValidationError as exc:
            raise InvalidInput(
                f"input for saga {definition.name!r} is invalid: "
                + "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()
                )
            ) from exc
        return definition, validated.model_dump(mode="json")

    def waiting_for(self, signal: str) -> WaitingFor:
        """The query filter for sagas waiting now for `signal`: the loaded definitions with
        a wait step of that name."""
        return WaitingFor(
            signal, frozenset((s.name, s.version) for s in self.all() if signal in s.waits())
        )

    def search_fields(self, saga: str | None = None) -> DeclaredFields:
        """Search field name -> kind -> the loaded definitions ("order v4") declaring it so;
        of the definitions of saga `saga` only, when given."""
        fields: dict[str, dict[SearchKind, list[str]]] = {}
        for d in sorted(self.all(), key=lambda d: (d.name, d.version)):
            if saga is None or d.name == saga:
                for f in d.search:
                    fields.setdefault(f.name, {}).setdefault(f.kind, []).append(
                        f"{d.name} v{d.version}"
                    )
        return fields

    def search_filter(
        self, texts: Sequence[str], saga: str | None = None
    ) -> tuple[SearchCondition, ...]:
        """`where` filters (`customer_id=c-17`) as the conditions of a SagaQuery, against the
        fields the loaded definitions (of saga `saga`, when given) declare; raises
        InvalidFilter saying what to write instead."""
        return conditions(texts, self.search_fields(saga))

    def definition(self, name: str, version: int) -> Saga | None:
        """The definition of (name, version), or None when this process does not load it."""
        return self._by_version.get((name, version))

    def loads(self, name: str, version: int) -> bool:
        return (name, version) in self._by_version

    def names(self) -> list[str]:
        return sorted({n for (n, _) in self._by_version})

    def all(self) -> list[Saga]:
        return list(self._by_version.values())

    def records(self) -> list[DefinitionRecord]:
        return [
            DefinitionRecord(s.name, s.version, s.fingerprint, s.document()) for s in self.all()
        ]

    def check_children(self) -> None:
        """Child steps name sagas this process loads, and a child that its parent may undo
        can be undone: it has no pivot."""
        for saga in self.all():
            for step in saga.steps:
                if step.child is None:
                    continue
                where = f"saga {saga.name!r} v{saga.version}, step {step.name!r}"
                children = [s for s in self.all() if s.name == step.child]
                if not children:
                    raise DefinitionError(
                        f"{where} starts child saga {step.child!r}, which is not loaded: add "
                        "its module to SAGA_MODULES"
                    )
                pivoted = [c for c in children if c.pivot_index is not None]
                if step.compensation is not None and pivoted:
                    c = pivoted[0]
                    assert c.pivot_index is not None
                    raise DefinitionError(
                        f"{where} is compensated, but child saga {c.name!r} v{c.version} has a "
                        f"pivot ({c.steps[c.pivot_index].name!r}) and cannot be undone past it: "
                        "make the child step the pivot, or put it after the pivot"
                    )

    def commands(self) -> set[str]:
        """Every command name the loaded sagas may send (actions and compensations)."""
        return set(self.command_senders())

    def command_senders(self) -> dict[str, set[tuple[str, str]]]:
        """Every command name the loaded sagas may send -> the (saga, step) pairs sending it."""
        senders: dict[str, set[tuple[str, str]]] = {}
        for saga in self.all():
            for step in saga.steps:
                if step.child is not None:  # it starts a saga: no participant queue
                    continue
                # A sleep step sends nothing; a step with nothing to undo no compensation.
                for name in (step.command, step.compensation):
                    if name:
                        senders.setdefault(name, set()).add((saga.name, step.name))
        return senders


def load_modules(module_names: Iterable[str]) -> Registry:
    """Import each module and collect the `Saga` objects defined at its top level."""
    registry = Registry()
    for module_name in module_names:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DefinitionError(
                f"cannot import saga module {module_name!r}: {exc}; check SAGA_MODULES"
            ) from exc
        found = [v for v in vars(module).values() if isinstance(v, Saga)]
        if not found:
            raise DefinitionError(f"module {module_name!r} defines no Saga at its top level")
        for saga in found:
            registry.add(saga)
    registry.check_children()
    return registry
