"""Semantic locks: the business resources a saga holds while it runs.

A saga has no isolation: between its steps, another saga sees (and may overwrite) what the
first has half done. Two sagas editing the same order each read the total in one step and
write it back in a later one, and one edit is lost. A semantic lock (Garcia-Molina & Salem's
countermeasure, Richardson's "semantic lock") is a flag on the business object itself: a saga
declares the resources it works on, as templates over its input,

    Saga("edit_order", input=EditOrder, locks=("order:{order_id}",), on_locked="queue")

and holds them from its start until it has completed, been compensated or been cancelled. A
second saga on a held resource is, per the definition's `on_locked` policy:

- ``"reject"``: not started; a `<saga>.rejected` event says which resource and who holds it;
- ``"queue"``: kept in the resource's FIFO queue and started when its resources are free;
- ``"wait"``: queued like that for at most `lock_wait` seconds, then rejected.

A parked (failed) saga keeps its locks: its resources may be half changed, and nobody else
should build on them until an operator has finished it.

This module is the pure part: checking a definition's templates and turning them into
resource names. The store keeps the locks and the queue (ports.SagaTransaction); the engine
takes them when a saga starts and gives them back, in the transaction that finishes it.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args
from uuid import UUID

from pydantic import BaseModel

from orchestrator.error_info import ErrorInfo
from orchestrator.errors import DefinitionError, InvalidInput
from orchestrator.messages import ParentRef
from orchestrator.state import SagaStatus

OnLocked = Literal["reject", "queue", "wait"]
POLICIES: tuple[str, ...] = get_args(OnLocked)


def check(
    where: str,
    input_model: type[BaseModel],
    templates: Iterable[str],
    on_locked: str,
    lock_wait: float | None,
) -> tuple[str, ...]:
    """Validate a definition's lock options; returns the templates as a tuple. Raises
    DefinitionError saying what to change."""
    if isinstance(templates, str):  # locks="order:{id}" would iterate its characters
        raise DefinitionError(
            f"{where}: locks must be a tuple of templates, e.g. locks=({templates!r},)"
        )
    found = tuple(templates)
    fields = set(input_model.model_fields)
    for template in found:
        _check_template(where, template, fields)
    if len(set(found)) != len(found):
        raise DefinitionError(f"{where}: locks {found!r} name a template twice; remove one")
    if on_locked not in POLICIES:
        raise DefinitionError(
            f"{where}: on_locked must be one of {', '.join(map(repr, POLICIES))}, got {on_locked!r}"
        )
    if on_locked == "wait":
        if (
            not isinstance(lock_wait, int | float)
            or isinstance(lock_wait, bool)
            or not math.isfinite(lock_wait)
            or lock_wait <= 0
        ):
            raise DefinitionError(
                f"{where}: on_locked='wait' needs lock_wait=<seconds>, a positive number: "
                f"how long a start may wait for its resources, got {lock_wait!r}"
            )
    elif lock_wait is not None:
        raise DefinitionError(
            f"{where}: lock_wait only applies to on_locked='wait' (this saga has "
            f"on_locked={on_locked!r}); remove lock_wait= or use on_locked='wait'"
        )
    if not found and (on_locked != "reject" or lock_wait is not None):
        raise DefinitionError(
            f"{where}: on_locked={on_locked!r} without locks does nothing; declare the "
            "resources the saga holds, e.g. locks=('order:{order_id}',)"
        )
    return found


def _check_template(where: str, template: object, fields: set[str]) -> None:
    if not isinstance(template, str) or not template.strip():
        raise DefinitionError(
            f"{where}: lock {template!r} must be a non-empty string such as 'order:{{order_id}}'"
        )
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DefinitionError(
            f"{where}: lock {template!r} is not a valid template ({exc}); write literal "
            "braces as '{{' and '}}'"
        ) from exc
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise DefinitionError(
                f"{where}: lock {template!r}: use plain {{field}} placeholders naming fields "
                f"of the input, without index, attribute, format or conversion; got {{{name}"
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
        if name not in fields:
            raise DefinitionError(
                f"{where}: lock {template!r} names {{{name}}}, which is not a field of the "
                f"input model (fields: {', '.join(sorted(fields)) or 'none'}); add the field "
                "or fix the placeholder"
            )


def resources(saga: str, templates: Iterable[str], input: Mapping[str, Any]) -> tuple[str, ...]:
    """The resources a saga with this (validated, JSON) input holds: each template filled in,
    sorted and without repeats. Sorted, because every transaction that takes several
    resources takes them in this one order, which keeps two of them from deadlocking."""
    named: set[str] = set()
    for template in templates:
        values: dict[str, str] = {}
        for _literal, name, _spec, _conversion in string.Formatter().parse(template):
            if name is None:
                continue
            value = input.get(name)
            if value is None or isinstance(value, dict | list):
                raise InvalidInput(
                    f"input for saga {saga!r}: lock {template!r} needs a value for "
                    f"{name!r} (a string or a number), got {value!r}"
                )
            values[name] = str(value)
        named.add(template.format(**values))
    return tuple(sorted(named))


@dataclass(frozen=True)
class LockConflict:
    """Why a saga cannot have its resources now. `held_by` is the saga that holds
    `resource`; None when the resource is free but other starts wait for it first (a new
    start never overtakes them)."""

    resource: str
    held_by: UUID | None
    held_by_key: str | None = None

    def describe(self) -> str:
        if self.held_by is None:
            return f"{self.resource} has starts queued for it"
        return f"{self.resource} is held by saga {self.held_by} (key {self.held_by_key})"

    def error(self) -> ErrorInfo:
        """The `error` of the `<saga>.rejected` event of a start refused by this conflict."""
        return ErrorInfo(
            type="locked",
            resource=self.resource,
            held_by=None if self.held_by is None else str(self.held_by),
            message=self.describe(),
        )


@dataclass(frozen=True)
class HeldLock:
    resource: str
    saga_id: UUID
    saga: str
    key: str
    acquired_at: datetime
    # The holder's status when read for operators: a parked (failed) holder keeps its locks
    # until an operator finishes it, and that is the case they need to see.
    status: SagaStatus | None = None


@dataclass(frozen=True)
class LockWaiter:
    """A start waiting for its resources: what is needed to start it later."""

    saga: str
    version: int
    key: str
    input: dict[str, Any]
    resources: tuple[str, ...]
    enqueued_at: datetime
    # None: waits as long as it takes ("queue"); else rejected past it ("wait").
    expires_at: datetime | None = None
    id: int | None = None  # assigned by the store; orders the queue
    # A child saga's start: the parent step it answers once started (or refused).
    parent: ParentRef | None = None

    def expired_error(self, now: datetime) -> ErrorInfo:
        """The `error` of the `<saga>.rejected` event when its wait has run out."""
        waited = (now - self.enqueued_at).total_seconds()
        return ErrorInfo(
            type="lock_wait_expired",
            resources=self.resources,
            enqueued_at=self.enqueued_at,
            message=f"waited {waited:.1f}s for {', '.join(self.resources)}; still held",
        )


@dataclass(frozen=True)
class LocksView:
    """What operators see: every held lock and every waiting start, oldest first."""

    held: tuple[HeldLock, ...]
    waiting: tuple[LockWaiter, ...]
