"""The rules a saga definition is checked against while it is built, at import time.

Each check raises `DefinitionError` with a message that names the saga and step and says what
to change, so a mistake stops the process that loads the definition, before any saga runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from pydantic import BaseModel

from orchestrator.errors import DefinitionError
from orchestrator.messages import COMMAND_RE
from orchestrator.steps import (
    OPTIONAL_LIMITS,
    UNSET,
    ChildInput,
    Items,
    OnTimeout,
    Output,
    StepDefinition,
    Unset,
    Until,
)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

# The SDK heartbeats every third of a heartbeat timeout; below a second that is a flood.
MIN_HEARTBEAT_TIMEOUT = 1.0


def check_saga(
    name: str,
    version: int,
    input: type[BaseModel],
    timeout: float,
    *,
    deadline: float | None,
    compensation_deadline: float | None,
    output: Output | None,
) -> None:
    """The options of `Saga(...)` itself."""
    if not NAME_RE.match(name):
        raise DefinitionError(
            f"saga name {name!r} is invalid: use lowercase letters, digits and '_', "
            "starting with a letter (it becomes part of routing keys)"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DefinitionError(f"saga {name!r}: version must be an integer >= 1, got {version!r}")
    if not (isinstance(input, type) and issubclass(input, BaseModel)):
        raise DefinitionError(
            f"saga {name!r}: input must be a pydantic BaseModel subclass that validates "
            f"the start input, got {input!r}"
        )
    check_timeout(name, "timeout", timeout)
    if deadline is not None:
        check_timeout(name, "deadline", deadline)
    if compensation_deadline is not None:
        check_timeout(name, "compensation_deadline", compensation_deadline)
    if output is not None and not callable(output):
        raise DefinitionError(
            f"saga {name!r}: output= must be a function of the saga's GuardContext returning "
            f"its output (a dict), got {output!r}"
        )


def check_step(
    where: str, step: StepDefinition, steps: Sequence[StepDefinition], *, in_parallel: bool
) -> None:
    """A step about to join `steps`: its names, time limits and guard, and the pivot's rules
    (at most one, never compensated, nothing compensated after it, never in parallel)."""
    if not NAME_RE.match(step.name):
        raise DefinitionError(
            f"{where}: step name is invalid: use lowercase letters, digits and '_'"
        )
    if any(s.name == step.name for s in steps):
        raise DefinitionError(f"{where}: a step with this name exists already; rename one")
    for label, cmd in (("command", step.command), ("compensation", step.compensation)):
        if cmd is not None and not COMMAND_RE.match(cmd):
            raise DefinitionError(
                f"{where}: {label} {cmd!r} is not a valid command name: use "
                "'<service>.<command>' in lowercase, e.g. 'payments.charge'"
            )
    check_limits(where, step)
    if step.guard is not None and not callable(step.guard):
        raise DefinitionError(
            f"{where}: guard= must be a function of the saga's GuardContext returning a "
            f"bool, got {step.guard!r}"
        )
    if step.on_guard_false not in ("skip", "fail"):
        raise DefinitionError(
            f"{where}: on_guard_false must be 'skip' or 'fail', got {step.on_guard_false!r}"
        )
    if step.payload is not None and not callable(step.payload):
        raise DefinitionError(
            f"{where}: payload= must be a function of the saga's GuardContext returning the "
            f"command's payload (a dict), got {step.payload!r}"
        )
    if step.result is not None and not (
        isinstance(step.result, type) and issubclass(step.result, BaseModel)
    ):
        raise DefinitionError(
            f"{where}: result= must be a pydantic BaseModel subclass that validates the "
            f"step's result, got {step.result!r}"
        )
    pivot = next((s for s in steps if s.pivot), None)
    if step.pivot and in_parallel:
        raise DefinitionError(
            f"{where}: a pivot is the saga's single go/no-go point; it cannot run in "
            "parallel with other steps: move it out of the parallel() block"
        )
    if step.pivot:
        if pivot is not None:
            raise DefinitionError(
                f"{where}: the saga has a pivot already ({pivot.name!r}); "
                "a saga has at most one pivot"
            )
        if step.compensation is not None:
            raise DefinitionError(
                f"{where}: a pivot is never compensated; remove compensation= "
                "(or drop pivot=True if the step can be undone)"
            )
    elif pivot is not None and step.compensation is not None:
        raise DefinitionError(
            f"{where}: it comes after the pivot {pivot.name!r}, so it is "
            "retriable and never compensated; remove compensation= or move the step "
            "before the pivot"
        )


def compensation_of(
    where: str,
    name: str,
    command: str,
    compensation: str | Unset | None,
    *,
    never_undone: bool,
    cross_service: bool,
    local: bool = False,
) -> str | None:
    """A step's compensation, checked where a mistake would cost money: a step the saga
    may have to undo (before the pivot, or in a saga without one) states its undo or
    says there is none; the undo goes to the service that did the action. `never_undone`:
    the step is the pivot or comes after it."""
    arg = "compensate" if local else "compensation"
    if not (NAME_RE.match(name) and COMMAND_RE.match(command)):
        return None if compensation is UNSET else compensation  # check_step says what is wrong
    if compensation is UNSET:
        if never_undone:
            return None
        service = command.split(".", 1)[0]
        undo_example = "compensate=<undo function>" if local else f"compensation='{service}.<undo>'"
        raise DefinitionError(
            f"{where}: it comes before the pivot (or the saga has none), so if a later "
            "step fails the saga undoes it, and it has no compensation. Name its undo "
            f"({undo_example}), or say there is nothing to undo with {arg}=None"
        )
    if compensation is None or local or not COMMAND_RE.match(compensation):
        return compensation  # a malformed name is reported by check_step
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


def check_map(
    where: str, items: Items, concurrency: int, max_items: int, in_parallel: bool
) -> None:
    """The options of a map step, which fans out by itself."""
    if not callable(items):
        raise DefinitionError(
            f"{where}: items= must be a function of the saga's GuardContext returning a "
            f"list, got {items!r}"
        )
    for label, value in (("concurrency", concurrency), ("max_items", max_items)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DefinitionError(f"{where}: {label} must be an integer >= 1, got {value!r}")
    if in_parallel:
        raise DefinitionError(
            f"{where}: a map step fans out by itself; move it out of the parallel() block"
        )


def check_child(where: str, saga: str, input: ChildInput | None) -> None:
    """The options of a child step: the child saga's name and how to build its input."""
    if not NAME_RE.match(saga):
        raise DefinitionError(f"{where}: saga={saga!r} is not a valid saga name")
    if input is not None and not callable(input):
        raise DefinitionError(
            f"{where}: input= must be a function of the saga's GuardContext returning the "
            f"child's input, got {input!r}"
        )


def check_sleep(
    saga: str, version: int, step: str, seconds: float | None, until: Until | None
) -> None:
    """The options of a sleep step: exactly one of a duration or a moment."""
    if (seconds is None) == (until is None):
        raise DefinitionError(
            f"saga {saga!r} v{version}, step {step!r}: give exactly one of seconds= or until="
        )
    if seconds is not None:
        check_timeout(f"saga {saga!r}, step {step!r}", "seconds", seconds)
    if until is not None and not callable(until):
        raise DefinitionError(
            f"saga {saga!r}, step {step!r}: until= must be a function of the saga's "
            f"GuardContext returning a datetime, got {until!r}"
        )


def check_wait(where: str, timeout: float | None, on_timeout: OnTimeout) -> None:
    """The options of a wait step: a timeout it cannot do without, and what it then does."""
    if timeout is None:
        raise DefinitionError(
            f"{where}: a wait needs timeout= (seconds): a signal that never comes would hold "
            "the saga for ever. Say how long to wait, and with on_timeout= whether the step "
            "then fails ('fail': the saga compensates, or parks past the pivot) or is skipped"
        )
    check_timeout(where, "timeout", timeout)
    if on_timeout not in ("fail", "skip"):
        raise DefinitionError(f"{where}: on_timeout must be 'fail' or 'skip', got {on_timeout!r}")


def check_limits(where: str, step: StepDefinition) -> None:
    """A step's time limits, each positive, and together able to hold: a heartbeat timeout
    inside its attempt's timeout, a step's whole budget at least one attempt long."""
    check_timeout(where, "timeout", step.timeout)
    check_timeout(where, "compensation_timeout", step.compensation_timeout)
    for label in OPTIONAL_LIMITS:
        value = getattr(step, label)
        if value is not None:
            check_timeout(where, label, value)
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


def check_timeout(where: str, label: str, value: float) -> None:
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)  # nan and inf pass `<= 0` but break the deadline arithmetic
        or value <= 0
    ):
        raise DefinitionError(
            f"{where}: {label} must be a positive number of seconds, got {value!r}"
        )
