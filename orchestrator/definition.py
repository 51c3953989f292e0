"""The saga definition DSL: a `Saga` is an ordered list of steps, validated as it is built.

Step classes follow Garcia-Molina & Salem: compensatable steps first, then at most one pivot
(the go/no-go step, never compensated), then retriable steps (never compensated, retried until
their policy is exhausted).
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel

from orchestrator import locks as locks_
from orchestrator.errors import DefinitionError
from orchestrator.locks import OnLocked
from orchestrator.messages import COMMAND_RE
from orchestrator.retry import Retry

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

DEFAULT_TIMEOUT = 30.0
# The SDK heartbeats every third of a heartbeat timeout; below a second that is a flood.
MIN_HEARTBEAT_TIMEOUT = 1.0
# Time limits a step has only when its definition sets them (absent from older fingerprints).
_OPTIONAL_LIMITS = (
    "schedule_to_start",
    "heartbeat_timeout",
    "schedule_to_close",
    "compensation_heartbeat_timeout",
    "compensation_schedule_to_close",
)
DEFAULT_RETRY = Retry()
DEFAULT_COMPENSATION_RETRY = Retry(max_attempts=10, initial_interval=1.0, max_interval=60.0)

LocalHandler = Callable[["StepContext"], Awaitable[Any]]


class Unset(enum.Enum):
    """The default of `compensation=`: not given, which a step the saga may undo must not
    leave (`compensation=None` says there is nothing to undo)."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET
F = TypeVar("F", bound=LocalHandler)
OnGuardFalse = Literal["skip", "fail"]


@dataclass(frozen=True)
class GuardContext:
    """What a guard (or a sleep's `until`) sees: the saga as it stands, under its lock.

    Guards run inside the pure state machine, just before their step is dispatched: they must
    be quick, deterministic functions of this context (no I/O, no clock), so a decision
    replayed after a crash decides the same.
    """

    saga_id: str
    key: str
    input: dict[str, Any]
    results: dict[str, Any]


Guard = Callable[[GuardContext], bool]
Until = Callable[[GuardContext], datetime]
# A map step's work list: one command per item, each item a JSON value (a chunk's bounds,
# a record id, ...). Like a guard, a quick deterministic function of the saga's state.
Items = Callable[[GuardContext], list[Any]]

DEFAULT_CONCURRENCY = 10
DEFAULT_MAX_ITEMS = 1000
# What a child step starts the child with (a JSON object its input model validates).
ChildInput = Callable[[GuardContext], dict[str, Any]]
# A child saga has its own deadlines and retries; the parent's step waits as long as it runs.
DEFAULT_CHILD_TIMEOUT = 30 * 24 * 3600.0
CHILD_START = "sagas.start."
CHILD_UNDO = "sagas.undo."


@dataclass(frozen=True)
class StepContext:
    """What a local step function receives: the saga's validated input and command identity."""

    saga_id: str
    saga: str
    step: str
    kind: str
    attempt: int
    idempotency_key: str
    input: BaseModel
    payload: dict[str, Any]


@dataclass(frozen=True)
class StepDefinition:
    name: str
    # None for a sleep step: it sends nothing, a database timer wakes it.
    command: str | None
    compensation: str | None
    pivot: bool
    # Start-to-close: the most one attempt may take from its start. Heartbeats never extend
    # it; the participant cancels a handler that reaches it.
    timeout: float
    retry: Retry
    compensation_timeout: float
    compensation_retry: Retry
    local: bool = False
    # Schedule-to-start: how long a command may wait in its queue before a participant takes
    # it (seen from its first heartbeat or reply). None: queue time counts against `timeout`.
    schedule_to_start: float | None = None
    # The longest gap between two heartbeats of a started attempt: a participant that died
    # or lost its connection is noticed after this, not at the end of `timeout`.
    heartbeat_timeout: float | None = None
    # The step's whole budget, from its first dispatch across every attempt and retry wait.
    schedule_to_close: float | None = None
    compensation_heartbeat_timeout: float | None = None
    compensation_schedule_to_close: float | None = None
    guard: Guard | None = field(default=None, compare=False)
    on_guard_false: OnGuardFalse = "skip"
    sleep_seconds: float | None = None
    sleep_until: Until | None = field(default=None, compare=False)
    handler: LocalHandler | None = field(default=None, compare=False)
    compensation_handler: LocalHandler | None = field(default=None, compare=False)
    # Steps of one `parallel()` block share a group number and are dispatched together.
    group: int | None = None
    # Steps that start together: a parallel group's first position, else the step's own.
    # Compensation undoes stages in reverse, each stage's steps together.
    stage: int = 0
    # A map step: one command per item of `items(ctx)`, at most `concurrency` in flight.
    items: Items | None = field(default=None, compare=False)
    concurrency: int = DEFAULT_CONCURRENCY
    max_items: int = DEFAULT_MAX_ITEMS
    # A child step: starts saga `child` and succeeds or fails with its outcome.
    child: str | None = None
    child_input: ChildInput | None = field(default=None, compare=False)

    @property
    def sleep(self) -> bool:
        return self.sleep_seconds is not None or self.sleep_until is not None

    @property
    def map(self) -> bool:
        return self.items is not None

    def document(self) -> dict[str, Any]:
        """The parts that define behaviour; what the fingerprint is computed over. Optional
        features appear only when used, so adding one leaves older fingerprints as they were."""
        doc: dict[str, Any] = {
            "name": self.name,
            "command": self.command,
            "compensation": self.compensation,
            "pivot": self.pivot,
            "local": self.local,
            "timeout": self.timeout,
            "retry": _policy(self.retry),
            "compensation_timeout": self.compensation_timeout,
            "compensation_retry": _policy(self.compensation_retry),
        }
        for label in _OPTIONAL_LIMITS:
            if getattr(self, label) is not None:
                doc[label] = getattr(self, label)
        if self.guard is not None:
            doc["guard"] = _qualname(self.guard)
            doc["on_guard_false"] = self.on_guard_false
        if self.sleep_seconds is not None:
            doc["sleep_seconds"] = self.sleep_seconds
        if self.sleep_until is not None:
            doc["sleep_until"] = _qualname(self.sleep_until)
        if self.group is not None:
            doc["parallel"] = self.group
        if self.child is not None:
            doc["child"] = self.child
            if self.child_input is not None:
                doc["child_input"] = _qualname(self.child_input)
        if self.items is not None:
            doc["map"] = {
                "items": _qualname(self.items),
                "concurrency": self.concurrency,
                "max_items": self.max_items,
            }
        return doc


class Saga:
    """A saga definition. Build it at import time in a module under `sagas/`.

    >>> saga = Saga("order", version=1, input=OrderPlaced)
    >>> saga.remote("reserve_credit", command="customers.reserve_credit",
    ...             compensation="customers.release_credit")
    """

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        input: type[BaseModel],
        timeout: float = DEFAULT_TIMEOUT,
        retry: Retry = DEFAULT_RETRY,
        compensation_retry: Retry = DEFAULT_COMPENSATION_RETRY,
        deadline: float | None = None,
        compensation_deadline: float | None = None,
        locks: Sequence[str] = (),
        on_locked: OnLocked = "reject",
        lock_wait: float | None = None,
    ) -> None:
        """`deadline`: seconds from the start by which the saga must have finished its steps;
        past it the saga is compensated (or parked, once the pivot was dispatched).
        `compensation_deadline`: seconds the compensation phase may take, from its start;
        past it the saga is parked for an operator.
        `locks`: semantic locks, the resources the saga holds from start to finish, as
        templates over the input (`"order:{order_id}"`); `on_locked` says what a start finds
        when one is held: "reject", "queue", or "wait" at most `lock_wait` seconds
        (orchestrator/locks.py)."""
        if not NAME_RE.match(name):
            raise DefinitionError(
                f"saga name {name!r} is invalid: use lowercase letters, digits and '_', "
                "starting with a letter (it becomes part of routing keys)"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DefinitionError(
                f"saga {name!r}: version must be an integer >= 1, got {version!r}"
            )
        if not (isinstance(input, type) and issubclass(input, BaseModel)):
            raise DefinitionError(
                f"saga {name!r}: input must be a pydantic BaseModel subclass that validates "
                f"the start input, got {input!r}"
            )
        _check_timeout(name, "timeout", timeout)
        if deadline is not None:
            _check_timeout(name, "deadline", deadline)
        if compensation_deadline is not None:
            _check_timeout(name, "compensation_deadline", compensation_deadline)
        self.deadline = deadline
        self.compensation_deadline = compensation_deadline
        self.name = name
        self.version = version
        self.input = input
        self.timeout = timeout
        self.retry = retry
        self.compensation_retry = compensation_retry
        self.locks = locks_.check(f"saga {name!r} v{version}", input, locks, on_locked, lock_wait)
        self.on_locked = on_locked
        self.lock_wait = lock_wait
        self._steps: list[StepDefinition] = []
        self._positions: dict[str, int] = {}
        self._groups = 0
        self._open_group: int | None = None

    @property
    def steps(self) -> tuple[StepDefinition, ...]:
        return tuple(self._steps)

    def position(self, name: str) -> int:
        """The step's index in the definition."""
        return self._positions[name]

    @property
    def pivot_index(self) -> int | None:
        return next((i for i, s in enumerate(self._steps) if s.pivot), None)

    def step(self, name: str) -> StepDefinition:
        return self._steps[self._positions[name]]

    @contextmanager
    def parallel(self) -> Iterator[Saga]:
        """Steps added inside the block run concurrently (fan-out) and the saga moves on when
        all have succeeded (fan-in). If one fails for good, the others are compensated once
        they answer, then the earlier steps in reverse.

        >>> with saga.parallel():
        ...     saga.remote("reserve_credit", command="customers.reserve_credit", ...)
        ...     saga.remote("reserve_stock", command="inventory.reserve", ...)
        """
        where = f"saga {self.name!r} v{self.version}"
        if self._open_group is not None:
            raise DefinitionError(f"{where}: parallel() blocks cannot be nested")
        self._groups += 1
        self._open_group = group = self._groups
        before = len(self._steps)
        try:
            yield self
        finally:
            self._open_group = None
        added = len([s for s in self._steps if s.group == group])
        if len(self._steps) != before and added < 2:
            raise DefinitionError(
                f"{where}: a parallel() block needs at least two steps; a single step "
                "needs no block"
            )
        if len(self._steps) == before:
            raise DefinitionError(f"{where}: a parallel() block holds no steps; add some")

    def map(
        self,
        name: str,
        *,
        command: str,
        items: Items,
        compensation: str | Unset | None = UNSET,
        cross_service_compensation: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        max_items: int = DEFAULT_MAX_ITEMS,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
        compensation_heartbeat_timeout: float | None = None,
        compensation_schedule_to_close: float | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """Dynamic fan-out: split work into one `command` per item of `items(ctx)` (a JSON
        list computed from the saga's input and earlier results), at most `concurrency` in
        flight. Each item is a step of its own (`name[0]`, `name[1]`, ...: retried, timed
        and compensated alone) and its command carries the item in `item`. The step's
        result is the list of the items' results, in item order. If an item fails for good,
        the items that succeeded are compensated, then the earlier steps."""
        where = f"saga {self.name!r} v{self.version}, step {name!r}"
        if not callable(items):
            raise DefinitionError(
                f"{where}: items= must be a function of the saga's GuardContext returning a "
                f"list, got {items!r}"
            )
        for label, value in (("concurrency", concurrency), ("max_items", max_items)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DefinitionError(f"{where}: {label} must be an integer >= 1, got {value!r}")
        if self._open_group is not None:
            raise DefinitionError(
                f"{where}: a map step fans out by itself; move it out of the parallel() block"
            )
        undo = self._undo(name, command, compensation, False, cross_service_compensation)
        self._add(
            StepDefinition(
                name=name,
                command=command,
                compensation=undo,
                pivot=False,
                **self._policies(
                    timeout,
                    retry,
                    compensation_timeout,
                    compensation_retry,
                    schedule_to_start=schedule_to_start,
                    heartbeat_timeout=heartbeat_timeout,
                    schedule_to_close=schedule_to_close,
                    compensation_heartbeat_timeout=compensation_heartbeat_timeout,
                    compensation_schedule_to_close=compensation_schedule_to_close,
                ),
                guard=guard,
                on_guard_false=on_guard_false,
                items=items,
                concurrency=concurrency,
                max_items=max_items,
            )
        )
        return self

    def remote(
        self,
        name: str,
        *,
        command: str,
        compensation: str | Unset | None = UNSET,
        cross_service_compensation: bool = False,
        pivot: bool = False,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
        compensation_heartbeat_timeout: float | None = None,
        compensation_schedule_to_close: float | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """Add a step whose command is routed to a participant service by its name.

        Time limits (seconds; docs/time-limits.md): `timeout` is the most one attempt may
        take from its start (heartbeats do not extend it); `heartbeat_timeout` the longest
        silence between heartbeats of a started attempt; `schedule_to_start` how long the
        command may wait in its queue; `schedule_to_close` the step's whole budget across
        attempts and retry waits. The `compensation_` ones are the same for its undo.

        `guard`: a precondition on the saga's state, checked just before dispatch; when it
        is false the step is skipped (`on_guard_false="skip"`) or fails without being sent
        (`"fail"`: the saga compensates, or is parked past the pivot)."""
        undo = self._undo(name, command, compensation, pivot, cross_service_compensation)
        self._add(
            StepDefinition(
                name=name,
                command=command,
                compensation=undo,
                pivot=pivot,
                **self._policies(
                    timeout,
                    retry,
                    compensation_timeout,
                    compensation_retry,
                    schedule_to_start=schedule_to_start,
                    heartbeat_timeout=heartbeat_timeout,
                    schedule_to_close=schedule_to_close,
                    compensation_heartbeat_timeout=compensation_heartbeat_timeout,
                    compensation_schedule_to_close=compensation_schedule_to_close,
                ),
                guard=guard,
                on_guard_false=on_guard_false,
            )
        )
        return self

    def sleep(
        self,
        name: str,
        *,
        seconds: float | None = None,
        until: Until | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """Add a durable wait: `seconds` after the step is reached, or `until` a moment
        computed from the saga (e.g. `lambda ctx: datetime.fromisoformat(ctx.input["at"])`).
        The wait is a database timer: it survives restarts and holds while the saga is
        paused. A cancel ends it. It sends nothing and is never compensated."""
        if (seconds is None) == (until is None):
            raise DefinitionError(
                f"saga {self.name!r} v{self.version}, step {name!r}: give exactly one of "
                "seconds= or until="
            )
        if seconds is not None:
            _check_timeout(f"saga {self.name!r}, step {name!r}", "seconds", seconds)
        if until is not None and not callable(until):
            raise DefinitionError(
                f"saga {self.name!r}, step {name!r}: until= must be a function of the saga's "
                f"GuardContext returning a datetime, got {until!r}"
            )
        self._add(
            StepDefinition(
                name=name,
                command=None,
                compensation=None,
                pivot=False,
                timeout=self.timeout,
                retry=self.retry,
                compensation_timeout=self.timeout,
                compensation_retry=self.compensation_retry,
                guard=guard,
                on_guard_false=on_guard_false,
                sleep_seconds=seconds,
                sleep_until=until,
            )
        )
        return self

    def local(
        self,
        name: str | None = None,
        *,
        compensate: LocalHandler | Unset | None = UNSET,
        pivot: bool = False,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
        heartbeat_timeout: float | None = None,
        schedule_to_close: float | None = None,
        compensation_heartbeat_timeout: float | None = None,
        compensation_schedule_to_close: float | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Callable[[F], F]:
        """Decorate an async function as a step run by `saga worker`.

        It travels through RabbitMQ like a remote step, under the command name
        `local.<saga>.<step>` (and `local.<saga>.<step>.compensate`).
        """

        def decorate(fn: F) -> F:
            step_name = name or fn.__name__
            command = f"local.{self.name}.{step_name}"
            undo = f"{command}.compensate" if callable(compensate) else compensate
            undo = self._undo(step_name, command, undo, pivot, False, local=True)
            self._add(
                StepDefinition(
                    name=step_name,
                    command=command,
                    compensation=undo,
                    pivot=pivot,
                    **self._policies(
                        timeout,
                        retry,
                        compensation_timeout,
                        compensation_retry,
                        schedule_to_start=schedule_to_start,
                        heartbeat_timeout=heartbeat_timeout,
                        schedule_to_close=schedule_to_close,
                        compensation_heartbeat_timeout=compensation_heartbeat_timeout,
                        compensation_schedule_to_close=compensation_schedule_to_close,
                    ),
                    local=True,
                    guard=guard,
                    on_guard_false=on_guard_false,
                    handler=fn,
                    compensation_handler=compensate if callable(compensate) else None,
                )
            )
            return fn

        return decorate

    def child(
        self,
        name: str,
        *,
        saga: str,
        input: ChildInput | None = None,
        pivot: bool = False,
        compensate: bool | None = None,
        timeout: float = DEFAULT_CHILD_TIMEOUT,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """A step that starts another saga and waits for its outcome: it succeeds with the
        child's results when the child completes, and fails when the child is compensated or
        cancelled. `input(ctx)` builds the child's input (default: this saga's input).

        Cancelling this saga cancels the running child; compensating the step undoes the
        child (a completed child is compensated). Before the pivot the step is compensated
        (`compensate` defaults to True there), so the child must have no pivot of its own.
        The child retries its own steps: the step itself is not retried."""
        where = f"saga {self.name!r} v{self.version}, step {name!r}"
        if not NAME_RE.match(saga):
            raise DefinitionError(f"{where}: saga={saga!r} is not a valid saga name")
        if input is not None and not callable(input):
            raise DefinitionError(
                f"{where}: input= must be a function of the saga's GuardContext returning the "
                f"child's input, got {input!r}"
            )
        if compensate is None:
            compensate = not pivot and self.pivot_index is None
        self._add(
            StepDefinition(
                name=name,
                command=CHILD_START + saga,
                compensation=CHILD_UNDO + saga if compensate else None,
                pivot=pivot,
                timeout=timeout,
                retry=Retry(max_attempts=1),
                compensation_timeout=timeout,
                compensation_retry=self.compensation_retry,
                guard=guard,
                on_guard_false=on_guard_false,
                child=saga,
                child_input=input,
            )
        )
        return self

    def _undo(
        self,
        name: str,
        command: str,
        compensation: str | Unset | None,
        pivot: bool,
        cross_service: bool,
        *,
        local: bool = False,
    ) -> str | None:
        """A step's compensation, checked where a mistake would cost money: a step the saga
        may have to undo (before the pivot, or in a saga without one) states its undo or
        says there is none; the undo goes to the service that did the action."""
        where = f"saga {self.name!r} v{self.version}, step {name!r}"
        arg = "compensate" if local else "compensation"
        if not (NAME_RE.match(name) and COMMAND_RE.match(command)):
            return None if compensation is UNSET else compensation  # _add says what is wrong
        if compensation is UNSET:
            if pivot or self.pivot_index is not None:
                return None
            service = command.split(".", 1)[0]
            undo_example = (
                "compensate=<undo function>" if local else f"compensation='{service}.<undo>'"
            )
            raise DefinitionError(
                f"{where}: it comes before the pivot (or the saga has none), so if a later "
                "step fails the saga undoes it, and it has no compensation. Name its undo "
                f"({undo_example}), or say there is nothing to undo with {arg}=None"
            )
        if compensation is None or local or not COMMAND_RE.match(compensation):
            return compensation  # a malformed name is reported by _add
        ours, theirs = command.split(".", 1)[0], compensation.split(".", 1)[0]
        if ours != theirs and not cross_service:
            raise DefinitionError(
                f"{where}: its compensation {compensation!r} goes to service {theirs!r}, its "
                f"action {command!r} to {ours!r}. A participant's barrier pairs an action "
                "with its undo in its own database: another service would find the action "
                f"never done and answer a null compensation. Use a command of {ours!r}, or "
                "pass cross_service_compensation=True if that service really undoes it"
            )
        return compensation

    def _policies(
        self,
        timeout: float | None,
        retry: Retry | None,
        compensation_timeout: float | None,
        compensation_retry: Retry | None,
        **limits: float | None,
    ) -> dict[str, Any]:
        """A step's time limits and retry policies, the saga's defaults where not given;
        `limits` are the optional ones (`schedule_to_start`, `heartbeat_timeout`, ...)."""
        return {
            "timeout": self.timeout if timeout is None else timeout,
            "retry": retry or self.retry,
            "compensation_timeout": (
                self.timeout if compensation_timeout is None else compensation_timeout
            ),
            "compensation_retry": compensation_retry or self.compensation_retry,
            **limits,
        }

    def _add(self, step: StepDefinition) -> None:
        where = f"saga {self.name!r} v{self.version}, step {step.name!r}"
        if not NAME_RE.match(step.name):
            raise DefinitionError(
                f"{where}: step name is invalid: use lowercase letters, digits and '_'"
            )
        if any(s.name == step.name for s in self._steps):
            raise DefinitionError(f"{where}: a step with this name exists already; rename one")
        for label, cmd in (("command", step.command), ("compensation", step.compensation)):
            if cmd is not None and not COMMAND_RE.match(cmd):
                raise DefinitionError(
                    f"{where}: {label} {cmd!r} is not a valid command name: use "
                    "'<service>.<command>' in lowercase, e.g. 'payments.charge'"
                )
        _check_limits(where, step)
        if step.guard is not None and not callable(step.guard):
            raise DefinitionError(
                f"{where}: guard= must be a function of the saga's GuardContext returning a "
                f"bool, got {step.guard!r}"
            )
        if step.on_guard_false not in ("skip", "fail"):
            raise DefinitionError(
                f"{where}: on_guard_false must be 'skip' or 'fail', got {step.on_guard_false!r}"
            )
        pivot = self.pivot_index
        if step.pivot and self._open_group is not None:
            raise DefinitionError(
                f"{where}: a pivot is the saga's single go/no-go point; it cannot run in "
                "parallel with other steps: move it out of the parallel() block"
            )
        if step.pivot:
            if pivot is not None:
                raise DefinitionError(
                    f"{where}: the saga has a pivot already ({self._steps[pivot].name!r}); "
                    "a saga has at most one pivot"
                )
            if step.compensation is not None:
                raise DefinitionError(
                    f"{where}: a pivot is never compensated; remove compensation= "
                    "(or drop pivot=True if the step can be undone)"
                )
        elif pivot is not None and step.compensation is not None:
            raise DefinitionError(
                f"{where}: it comes after the pivot {self._steps[pivot].name!r}, so it is "
                "retriable and never compensated; remove compensation= or move the step "
                "before the pivot"
            )
        stage = len(self._steps)
        if self._open_group is not None:
            first = next((s for s in self._steps if s.group == self._open_group), None)
            stage = stage if first is None else first.stage
        self._positions[step.name] = len(self._steps)
        self._steps.append(replace(step, group=self._open_group, stage=stage))

    def validate(self) -> None:
        """Whole-definition checks that cannot run while steps are still being added."""
        if not self._steps:
            raise DefinitionError(f"saga {self.name!r} v{self.version} has no steps; add one")

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "input_schema": self.input.model_json_schema(),
            "steps": [s.document() for s in self._steps],
        }
        if self.deadline is not None:
            doc["deadline"] = self.deadline
        if self.compensation_deadline is not None:
            doc["compensation_deadline"] = self.compensation_deadline
        if self.locks:
            doc["locks"] = {
                "resources": list(self.locks),
                "on_locked": self.on_locked,
                "lock_wait": self.lock_wait,
            }
        return doc

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.document(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, steps={len(self._steps)})"


def _policy(retry: Retry) -> dict[str, Any]:
    # Like the step's optional features, non_retryable appears only when used: a policy
    # without it keeps the fingerprint it had before the field existed.
    if retry.non_retryable:
        return retry.model_dump(mode="json")
    return retry.model_dump(mode="json", exclude={"non_retryable"})


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _check_limits(where: str, step: StepDefinition) -> None:
    """A step's time limits, each positive, and together able to hold: a heartbeat timeout
    inside its attempt's timeout, a step's whole budget at least one attempt long."""
    _check_timeout(where, "timeout", step.timeout)
    _check_timeout(where, "compensation_timeout", step.compensation_timeout)
    for label in _OPTIONAL_LIMITS:
        value = getattr(step, label)
        if value is not None:
            _check_timeout(where, label, value)
    for prefix, timeout in (("", step.timeout), ("compensation_", step.compensation_timeout)):
        beat: float | None = getattr(step, f"{prefix}heartbeat_timeout")
        close: float | None = getattr(step, f"{prefix}schedule_to_close")
        if beat is not None and beat < MIN_HEARTBEAT_TIMEOUT:
            raise DefinitionError(
                f"{where}: {prefix}heartbeat_timeout={beat:g} is too short: participants "
                f"heartbeat every third of it; use at least {MIN_HEARTBEAT_TIMEOUT:g} s"
            )
        if beat is not None and beat >= timeout:
            raise DefinitionError(
                f"{where}: {prefix}heartbeat_timeout={beat:g} must be shorter than "
                f"{prefix}timeout={timeout:g}, or it can never fire first. For a long step "
                f"set a long {prefix}timeout (the most one attempt may take) and a short "
                f"{prefix}heartbeat_timeout (how soon a dead participant is noticed)"
            )
        if close is not None and close < timeout:
            raise DefinitionError(
                f"{where}: {prefix}schedule_to_close={close:g} is shorter than one attempt's "
                f"{prefix}timeout={timeout:g}: it is the step's whole budget across attempts "
                f"and retry waits; raise it, or lower {prefix}timeout"
            )


def _check_timeout(where: str, label: str, value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)  # nan and inf pass `<= 0` but break the deadline arithmetic
        or value <= 0
    ):
        raise DefinitionError(
            f"{where}: {label} must be a positive number of seconds, got {value!r}"
        )
