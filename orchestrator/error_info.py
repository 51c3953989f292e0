"""`ErrorInfo`: why a step's attempt, a step or a saga failed, or why a start started nothing.

The transitions and the starts build it; it becomes a dict (`to_dict`) where it is stored
or sent: a saga's and a step's `error` as the state holds them, the detail of a history
entry, the `error` of an outcome event. `from_dict` reads such a dict back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The keys of a dict in the order they are written; unset ones (None) are left out.
_KEYS = (
    "type",
    "timeout",
    "step",
    "resource",
    "held_by",
    "resources",
    "enqueued_at",
    "message",
    "retryable",
    "unconsumed",
    "cause",
)
# Keys errors of these types always carry, null included: a park during compensation says
# what it was compensating for (null: a cancel, no error); a lock conflict who holds the
# resource (null: nobody, but other starts are queued for it).
_ALWAYS = {
    "compensation_failed": frozenset({"cause"}),
    "compensation_deadline_exceeded": frozenset({"cause"}),
    "locked": frozenset({"held_by"}),
}


@dataclass(frozen=True, kw_only=True)
class ErrorInfo:
    # What went wrong: a participant's own type (`card_declined`), or the engine's
    # (`timeout`, `step_failed`, `guard_failed`, `locked`, ...).
    type: str
    message: str
    # The step that failed, in a saga's error.
    step: str | None = None
    # False: trying again cannot help. Unset counts as retryable (Retry.retries).
    retryable: bool | None = None
    # Which time limit ended the attempt (schedule_to_start, start_to_close, heartbeat,
    # schedule_to_close, deadline), in a `timeout` error.
    timeout: str | None = None
    # A timeout while nobody consumed the command's queue.
    unconsumed: bool | None = None
    # What this error came after: what a parked compensation was undoing for, the last
    # attempt's error when the step's schedule-to-close budget ran out.
    cause: ErrorInfo | None = None
    # A start a semantic lock kept from starting: the resource held and its holder's id, or
    # the resources a queued start waited for, and since when.
    resource: str | None = None
    held_by: str | None = None
    resources: tuple[str, ...] | None = None
    enqueued_at: datetime | None = None
    # Keys of a stored dict this release does not know (a later release wrote them): kept
    # as they are, so rewriting the error loses nothing.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        always = _ALWAYS.get(self.type, frozenset())
        out: dict[str, Any] = {}
        for key in _KEYS:
            value = getattr(self, key)
            if value is None and key not in always:
                continue
            if isinstance(value, ErrorInfo):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            out[key] = value
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorInfo:
        cause = data.get("cause")
        resources = data.get("resources")
        enqueued_at = data.get("enqueued_at")
        return cls(
            type=data["type"],
            message=data.get("message", ""),
            step=data.get("step"),
            retryable=data.get("retryable"),
            timeout=data.get("timeout"),
            unconsumed=data.get("unconsumed"),
            cause=None if cause is None else cls.from_dict(cause),
            resource=data.get("resource"),
            held_by=data.get("held_by"),
            resources=None if resources is None else tuple(resources),
            enqueued_at=None if enqueued_at is None else datetime.fromisoformat(enqueued_at),
            extra={k: v for k, v in data.items() if k not in _KEYS},
        )

    @property
    def summary(self) -> str:
        """The message, or the type when there is none: what to tell a person."""
        return self.message or self.type or "error"
