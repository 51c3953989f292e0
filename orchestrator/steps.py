"""What a saga is made of: a step's definition, and what its functions see when they run.

A `StepDefinition` is built by the `Saga` builder (orchestrator/saga.py) and read by the state
machine; its `document()` is what the definition's fingerprint is computed over.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel

from orchestrator.retry import Retry

# Time limits a step has only when its definition sets them (absent from older fingerprints).
OPTIONAL_LIMITS = (
    "schedule_to_start",
    "heartbeat_timeout",
    "schedule_to_close",
    "compensation_heartbeat_timeout",
    "compensation_schedule_to_close",
)
DEFAULT_CONCURRENCY = 10
DEFAULT_MAX_ITEMS = 1000


class Unset(enum.Enum):
    """The default of `compensation=`: not given, which a step the saga may undo must not
    leave (`compensation=None` says there is nothing to undo)."""

    UNSET = "unset"


UNSET: Final = Unset.UNSET
OnGuardFalse = Literal["skip", "fail"]
# What a wait step does when its timeout passes without its signal: fail (the saga
# compensates, or parks past the pivot) or skip (the saga goes on without a result).
OnTimeout = Literal["fail", "skip"]
M = TypeVar("M", bound=BaseModel)


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
    # The results of the steps that succeeded before this moment (and of those an operator
    # skipped with one): never of a step still running, such as a parallel sibling.
    results: dict[str, Any]

    def result(self, step: str, model: type[M]) -> M:
        """The result of earlier step `step`, validated by `model` (KeyError when the step
        has none: it has not succeeded, or was skipped)."""
        return model.model_validate(self.results[step])


Guard = Callable[[GuardContext], bool]
Until = Callable[[GuardContext], datetime]
# A map step's work list: one command per item, each item a JSON value (a chunk's bounds,
# a record id, ...). Like a guard, a quick deterministic function of the saga's state.
Items = Callable[[GuardContext], list[Any]]
# What a child step starts the child with (a JSON object its input model validates).
ChildInput = Callable[[GuardContext], dict[str, Any]]
# What a step's commands carry as their `payload` instead of the saga's input (a JSON
# object), computed once when the step begins.
Payload = Callable[[GuardContext], dict[str, Any]]
# What a completed saga makes of its input and results: its output (a JSON object).
Output = Callable[[GuardContext], dict[str, Any]]


@dataclass(frozen=True)
class StepContext:
    """What a local step function receives: the command's identity and payload, the saga's
    validated input, and in a compensation the result of the action it undoes."""

    saga_id: str
    saga: str
    step: str
    kind: str
    attempt: int
    idempotency_key: str
    # The saga's input, validated by its model; None for a step with `payload=`, whose
    # commands carry what the payload function built instead.
    saga_input: BaseModel | None
    payload: dict[str, Any]
    # In a compensation of a step with `result=`: the result its action replied. None
    # otherwise, and when the action has none to give: it never ran, timed out, failed, or
    # returned nothing.
    action_result: Any = None

    @property
    def input(self) -> BaseModel:
        """The saga's validated input. A step with `payload=` has only its payload: put what
        it needs of the input there (`ctx.payload`)."""
        if self.saga_input is None:
            raise AttributeError(
                f"step {self.step!r} has payload=, so its command carries that payload, not "
                "the saga's input: read ctx.payload, and build there what it needs of the input"
            )
        return self.saga_input


LocalHandler = Callable[[StepContext], Awaitable[Any]]


@dataclass(frozen=True)
class StepDefinition:
    name: str
    # None for a sleep or wait step: it sends nothing, a signal or a database timer ends it.
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
    # What the step's commands carry as `payload`; None: the saga's input.
    payload: Payload | None = field(default=None, compare=False)
    # The model a success reply's result must validate (a map's: each item's result); with
    # it, the step's compensation is given the result (`action_result`). A wait step's: the
    # model its signal's payload must validate.
    result: type[BaseModel] | None = None
    # A wait step: it waits for the signal named as the step, at most `wait_timeout` seconds.
    wait_timeout: float | None = None
    on_timeout: OnTimeout = "fail"

    @property
    def sleep(self) -> bool:
        return self.sleep_seconds is not None or self.sleep_until is not None

    @property
    def wait(self) -> bool:
        """A wait step: it takes the signal named as the step, or times out."""
        return self.wait_timeout is not None

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
        for label in OPTIONAL_LIMITS:
            if getattr(self, label) is not None:
                doc[label] = getattr(self, label)
        if self.guard is not None:
            doc["guard"] = qualname(self.guard)
            doc["on_guard_false"] = self.on_guard_false
        if self.sleep_seconds is not None:
            doc["sleep_seconds"] = self.sleep_seconds
        if self.sleep_until is not None:
            doc["sleep_until"] = qualname(self.sleep_until)
        if self.group is not None:
            doc["parallel"] = self.group
        if self.child is not None:
            doc["child"] = self.child
            if self.child_input is not None:
                doc["child_input"] = qualname(self.child_input)
        if self.items is not None:
            doc["map"] = {
                "items": qualname(self.items),
                "concurrency": self.concurrency,
                "max_items": self.max_items,
            }
        if self.payload is not None:
            doc["payload"] = qualname(self.payload)
        if self.result is not None:
            doc["result"] = qualname(self.result)
        if self.wait_timeout is not None:
            doc["wait"] = {"timeout": self.wait_timeout, "on_timeout": self.on_timeout}
        return doc


def _policy(retry: Retry) -> dict[str, Any]:
    # Like the step's optional features, non_retryable appears only when used: a policy
    # without it keeps the fingerprint it had before the field existed.
    if retry.non_retryable:
        return retry.model_dump(mode="json")
    return retry.model_dump(mode="json", exclude={"non_retryable"})


def qualname(fn: Callable[..., Any] | type) -> str:
    """How the fingerprint names a function or a model: its module and qualified name."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
