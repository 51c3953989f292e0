"""What the participants of a `SagaTest` answer: the scripts a test gives per command (or
step, or child saga) name, a local step's real function, or the default."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from orchestrator.messages import Command
from orchestrator.saga import Saga
from orchestrator.testing.answers import Answer, succeed
from orchestrator.testing.local_calls import call_local, local_function

Kind = Literal["action", "compensation"]


class SagaTestError(AssertionError):
    """A test asked for something that did not happen (it says what did), or scripted
    something the saga cannot use."""


@dataclass(frozen=True)
class Delivery:
    """What a participant, or a child saga, is asked to do: a command (`command` set), or a
    child saga's start (kind action) or undo (kind compensation), named after the child."""

    name: str
    step: str
    kind: Kind
    command_id: UUID
    at: datetime
    command: Command | None = None


class Scripts:
    """The scripted answers of one saga's participants. `strict`: an unscripted command is
    an error, not a success with no result. `auto=False`: only scripts answer."""

    def __init__(self, definition: Saga, *, strict: bool, auto: bool) -> None:
        self.definition = definition
        self.strict = strict
        self.auto = auto
        self._answers: dict[tuple[str, Kind | None], list[Answer]] = {}
        self._used: Counter[tuple[str, Kind | None]] = Counter()

    def add(self, name: str, answers: tuple[Answer, ...], kind: Kind | None) -> None:
        if not answers:
            raise SagaTestError(f"script({name!r}): give at least one answer")
        known = self._names()
        if name not in known:
            raise SagaTestError(
                f"script({name!r}): saga {self.definition.name!r} sends no such command and "
                f"has no such step; it knows {sorted(known)}"
            )
        self._answers[(name, kind)] = list(answers)

    def _names(self) -> set[str]:
        names: set[str] = set()
        for step in self.definition.steps:
            names.add(step.name)
            names.update(n for n in (step.command, step.compensation, step.child) if n)
        return names

    def answer(self, delivery: Delivery) -> Answer | None:
        """The answer to `delivery`; None: nobody answers it on their own (`auto=False`)."""
        for key in (
            (delivery.name, delivery.kind),
            (delivery.name, None),
            (_step_of(delivery.step), delivery.kind),
            (_step_of(delivery.step), None),
        ):
            answers = self._answers.get(key)
            if answers is not None:
                n = self._used[key]
                self._used[key] += 1
                return answers[min(n, len(answers) - 1)]
        if not self.auto:
            return None
        if delivery.command is not None:
            fn = local_function(self.definition, delivery.command)
            if fn is not None:
                return call_local(self.definition, fn, delivery.command)
        if self.strict:
            raise SagaTestError(
                f"no script for {delivery.kind} {delivery.name!r} (step {delivery.step!r}) "
                f"and strict=True; script it: t.script({delivery.name!r}, succeed(...))"
            )
        return succeed()


def _step_of(step: str) -> str:
    """A map item's step (`<map step>[n]`) is scripted by its map step's name."""
    return step.rpartition("[")[0] if step.endswith("]") else step
