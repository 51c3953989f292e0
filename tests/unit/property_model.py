"""The property test's own model of a saga run: what was dispatched, how each command ended,
and what the definition says must follow (stages, map items, compensations).

The model names what it tracks by *unit*: a step that sends commands, i.e. a plain step or
one item of a map step (`<map>[<n>]`). A map step itself sends nothing; its units are its
items, known once the model has seen the map begin.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from orchestrator.definition import GuardContext, Saga, StepDefinition
from orchestrator.messages import Command, Reply, ReplyError
from orchestrator.state import SagaState, SagaStatus

Outcome = Literal["success", "failure", "timeout"]


@dataclass
class Sent:
    """A command the machine dispatched, as the driver sees it."""

    command: Command
    deadline: datetime
    resolution: Outcome | None = None  # None while in flight
    retryable: bool = True
    # When its first heartbeat came (the start report, when the command asks for one).
    started: datetime | None = None

    def heard(self, now: datetime) -> None:
        """A heartbeat: it never extends the start-to-close timeout, which runs from the
        start report when the command asks for one (else from the dispatch: no change);
        with a heartbeat timeout, the next heartbeat is due within it."""
        cmd = self.command
        if not cmd.report_start or cmd.timeout is None:
            return
        self.started = self.started or now
        deadline = self.started + timedelta(seconds=cmd.timeout)
        if cmd.heartbeat_timeout is not None:
            deadline = min(deadline, now + timedelta(seconds=cmd.heartbeat_timeout))
        self.deadline = deadline

    @property
    def key(self) -> tuple[str, str]:
        return (self.command.step, self.command.kind)


def map_of(unit: str) -> str | None:
    """The map step a unit is an item of, or None for a plain step."""
    return unit.rpartition("[")[0] if unit.endswith("]") else None


def item_number(unit: str) -> int:
    return int(unit.rpartition("[")[2][:-1])


@dataclass
class Model:
    definition: Saga
    saga_id: uuid.UUID
    key: str
    input: dict[str, Any]
    sent: list[Sent] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    cancel_accepted: bool = False
    first_compensations: list[str] = field(default_factory=list)  # units, in order
    compensated: set[str] = field(default_factory=set)
    history: list[str] = field(default_factory=list)
    # A map step's items, as the model computed them when it saw the map begin.
    items: dict[str, list[Any]] = field(default_factory=dict)
    # The most actions and compensations out at once: how parallel the run got.
    peak: dict[str, int] = field(default_factory=lambda: {"action": 0, "compensation": 0})

    # -- where a unit stands in the definition ----------------------------------------------------

    def spec(self, unit: str) -> StepDefinition:
        return self.definition.step(map_of(unit) or unit)

    def index(self, unit: str) -> int:
        """The definition index of the step, or of the map step for an item."""
        return self.definition.position(map_of(unit) or unit)

    def stage(self, unit: str) -> int:
        return self.spec(unit).stage

    def order(self, unit: str) -> tuple[int, int, int]:
        """Dispatch order: by stage, then definition index, then item number."""
        item = item_number(unit) if map_of(unit) is not None else -1
        return (self.stage(unit), self.index(unit), item)

    def units(self, spec: StepDefinition) -> list[str]:
        """What a definition step sends commands as: itself, or its items once it began."""
        if not spec.map:
            return [spec.name]
        return [f"{spec.name}[{n}]" for n in range(len(self.items.get(spec.name, [])))]

    def stage_steps(self, stage: int) -> list[StepDefinition]:
        return [s for s in self.definition.steps if s.stage == stage]

    # -- what the machine should compute ----------------------------------------------------------

    def results_before(self, stage: float) -> dict[str, Any]:
        """The saga's results once every stage before `stage` has succeeded (the driver's
        replies carry `{"ok": <unit>}`; a map's result lists its items' results)."""
        results: dict[str, Any] = {}
        for spec in self.definition.steps:
            if spec.stage < stage:
                if spec.map:
                    results[spec.name] = [{"ok": u} for u in self.units(spec)]
                else:
                    results[spec.name] = {"ok": spec.name}
        return results

    def expected_items(self, spec: StepDefinition) -> list[Any]:
        assert spec.items is not None
        ctx = GuardContext(
            saga_id=str(self.saga_id),
            key=self.key,
            input=dict(self.input),
            results=self.results_before(spec.stage),
        )
        items: list[Any] = json.loads(json.dumps(spec.items(ctx)))
        return items

    def opening(self, stage: int) -> list[str]:
        """The units a stage dispatches when it begins: each step of a parallel group, or a
        map's first items up to its concurrency."""
        units: list[str] = []
        for spec in self.stage_steps(stage):
            units += self.units(spec)[: spec.concurrency] if spec.map else [spec.name]
        return units

    def compensation_opening(self, stage: int) -> list[str]:
        """The compensations a stage dispatches when its undoing begins: all of a group's,
        or a map's latest items up to its concurrency; latest first."""
        todo = sorted((u for u in self.must_compensate() if self.stage(u) == stage), key=self.order)
        specs = self.stage_steps(stage)
        cap = specs[0].concurrency if specs[0].map else len(todo)
        return list(reversed(todo[-cap:])) if cap else []

    # -- what happened ----------------------------------------------------------------------------

    def in_flight(self) -> list[Sent]:
        return [s for s in self.sent if s.resolution is None]

    def in_flight_of(self, kind: str) -> list[Sent]:
        return [s for s in self.in_flight() if s.command.kind == kind]

    def latest(self, unit: str, kind: str) -> Sent | None:
        found = [s for s in self.sent if s.key == (unit, kind)]
        return found[-1] if found else None

    def action_outcome(self, unit: str) -> Outcome | None:
        last = self.latest(unit, "action")
        return None if last is None else last.resolution

    def done(self, spec: StepDefinition) -> bool:
        """The step succeeded: its action, or (a map) it began and every item's action."""
        if spec.map and spec.name not in self.items:
            return False
        return all(self.action_outcome(u) == "success" for u in self.units(spec))

    def acted(self) -> list[str]:
        """Units an action was sent for, in dispatch order."""
        return list(dict.fromkeys(s.command.step for s in self.sent if s.command.kind == "action"))

    def must_compensate(self) -> set[str]:
        """Units with a compensation whose action may have had an effect: it succeeded, or
        its last attempt timed out or failed retryably (another delivery of the command may
        have acted; only a non-retryable failure is final)."""
        return {
            u
            for u in self.acted()
            if self.spec(u).compensation is not None and self._maybe_acted(u)
        }

    def _maybe_acted(self, unit: str) -> bool:
        last = self.latest(unit, "action")
        if last is None:
            return False
        return last.resolution in ("success", "timeout") or (
            last.resolution == "failure" and last.retryable
        )

    def pivot(self) -> str | None:
        pivot = self.definition.pivot_index
        return None if pivot is None else self.definition.steps[pivot].name

    def pivot_dispatched(self) -> bool:
        pivot = self.pivot()
        return pivot is not None and self.latest(pivot, "action") is not None

    def pivot_succeeded(self) -> bool:
        pivot = self.pivot()
        return pivot is not None and self.action_outcome(pivot) == "success"

    def past_pivot(self, unit: str) -> bool:
        pivot = self.definition.pivot_index
        return pivot is not None and self.index(unit) > pivot

    def unit_count(self) -> int:
        """Every unit the saga can have: its plain steps and up to four items per map."""
        return sum(4 if s.map else 1 for s in self.definition.steps)


def reachable(moves: dict[Any, frozenset[Any]], old: Any, new: Any) -> bool:
    """`new` is `old` or reachable from it in the move table (one decision may chain moves)."""
    seen, todo = {old}, [old]
    while todo:
        for nxt in moves[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return new in seen


def in_flight_ids(state: SagaState) -> dict[uuid.UUID, datetime | None]:
    return {s.command_id: s.due_at for s in state.steps if s.in_flight and s.command_id}


def phase_of(state: SagaState) -> SagaStatus:
    """What the saga is doing: its status, or while paused the status it resumes to."""
    if state.status == SagaStatus.PAUSED and state.resume_status is not None:
        return state.resume_status
    return state.status


def make_reply(command: Command, outcome: str) -> Reply:
    if outcome == "success":
        return Reply(
            command_id=command.command_id,
            saga_id=command.saga_id,
            step=command.step,
            outcome="success",
            result={"ok": command.step},
        )
    if outcome == "heartbeat":
        return Reply(
            command_id=command.command_id,
            saga_id=command.saga_id,
            step=command.step,
            outcome="heartbeat",
        )
    return Reply(
        command_id=command.command_id,
        saga_id=command.saga_id,
        step=command.step,
        outcome="failure",
        error=None
        if outcome == "bare_failure"
        else ReplyError(type="boom", message=outcome, retryable=outcome != "fatal"),
    )
