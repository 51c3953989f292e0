"""The saga definition DSL: a `Saga` is an ordered list of steps, validated as it is built.

Step classes follow Garcia-Molina & Salem: compensatable steps first, then at most one pivot
(the go/no-go step, never compensated), then retriable steps (never compensated, retried until
their policy is exhausted).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from orchestrator.errors import DefinitionError
from orchestrator.retry import Retry

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# A command name is a routing key: `<service>.<command>`; the service part picks the queue.
COMMAND_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRY = Retry()
DEFAULT_COMPENSATION_RETRY = Retry(max_attempts=10, initial_interval=1.0, max_interval=60.0)

LocalHandler = Callable[["StepContext"], Awaitable[Any]]
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
    # Start-to-close: how long an attempt may run once started; each heartbeat restarts it.
    timeout: float
    retry: Retry
    compensation_timeout: float
    compensation_retry: Retry
    local: bool = False
    # Schedule-to-start: how long a command may wait in its queue before a participant takes
    # it (seen from its first heartbeat or reply). None: queue time counts against `timeout`.
    schedule_to_start: float | None = None
    guard: Guard | None = field(default=None, compare=False)
    on_guard_false: OnGuardFalse = "skip"
    sleep_seconds: float | None = None
    sleep_until: Until | None = field(default=None, compare=False)
    handler: LocalHandler | None = field(default=None, compare=False)
    compensation_handler: LocalHandler | None = field(default=None, compare=False)

    @property
    def sleep(self) -> bool:
        return self.sleep_seconds is not None or self.sleep_until is not None

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
        if self.schedule_to_start is not None:
            doc["schedule_to_start"] = self.schedule_to_start
        if self.guard is not None:
            doc["guard"] = _qualname(self.guard)
            doc["on_guard_false"] = self.on_guard_false
        if self.sleep_seconds is not None:
            doc["sleep_seconds"] = self.sleep_seconds
        if self.sleep_until is not None:
            doc["sleep_until"] = _qualname(self.sleep_until)
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
    ) -> None:
        """`deadline`: seconds from the start by which the saga must have finished its steps;
        past it the saga is compensated (or parked, once the pivot was dispatched).
        `compensation_deadline`: seconds the compensation phase may take, from its start;
        past it the saga is parked for an operator."""
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
        self._steps: list[StepDefinition] = []

    @property
    def steps(self) -> tuple[StepDefinition, ...]:
        return tuple(self._steps)

    @property
    def pivot_index(self) -> int | None:
        return next((i for i, s in enumerate(self._steps) if s.pivot), None)

    def step(self, name: str) -> StepDefinition:
        for s in self._steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def remote(
        self,
        name: str,
        *,
        command: str,
        compensation: str | None = None,
        pivot: bool = False,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
        guard: Guard | None = None,
        on_guard_false: OnGuardFalse = "skip",
    ) -> Saga:
        """Add a step whose command is routed to a participant service by its name.

        `guard`: a precondition on the saga's state, checked just before dispatch; when it
        is false the step is skipped (`on_guard_false="skip"`) or fails without being sent
        (`"fail"`: the saga compensates, or is parked past the pivot)."""
        self._add(
            StepDefinition(
                name=name,
                command=command,
                compensation=compensation,
                pivot=pivot,
                timeout=self.timeout if timeout is None else timeout,
                retry=retry or self.retry,
                compensation_timeout=(
                    self.timeout if compensation_timeout is None else compensation_timeout
                ),
                compensation_retry=compensation_retry or self.compensation_retry,
                schedule_to_start=schedule_to_start,
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
        compensate: LocalHandler | None = None,
        pivot: bool = False,
        timeout: float | None = None,
        retry: Retry | None = None,
        compensation_timeout: float | None = None,
        compensation_retry: Retry | None = None,
        schedule_to_start: float | None = None,
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
            self._add(
                StepDefinition(
                    name=step_name,
                    command=command,
                    compensation=f"{command}.compensate" if compensate else None,
                    pivot=pivot,
                    timeout=self.timeout if timeout is None else timeout,
                    retry=retry or self.retry,
                    compensation_timeout=(
                        self.timeout if compensation_timeout is None else compensation_timeout
                    ),
                    compensation_retry=compensation_retry or self.compensation_retry,
                    local=True,
                    schedule_to_start=schedule_to_start,
                    guard=guard,
                    on_guard_false=on_guard_false,
                    handler=fn,
                    compensation_handler=compensate,
                )
            )
            return fn

        return decorate

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
        _check_timeout(where, "timeout", step.timeout)
        _check_timeout(where, "compensation_timeout", step.compensation_timeout)
        if step.schedule_to_start is not None:
            _check_timeout(where, "schedule_to_start", step.schedule_to_start)
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
        self._steps.append(step)

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
