"""Wire protocol v1: the JSON bodies exchanged over RabbitMQ, validated on the way in.

Inbound models forbid unknown fields only where a typo would silently change meaning;
payloads and results are free-form JSON objects owned by the saga author.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROTOCOL_VERSION = 1


def aware_utc(moment: datetime) -> datetime:
    """A datetime without an offset means UTC (a sender that omits it, a user's `until=`);
    comparing naive with aware would raise instead of answering."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# A command name is a routing key: `<service>.<command>`; the service part picks the queue.
COMMAND_RE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")
MAX_KEY_LENGTH = 200
MAX_NAME_LENGTH = 100


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParentRef(_Wire):
    """The parent saga step a child saga answers: when the child ends, a reply to
    `command_id` goes to the parent. `kind` "action": the step that started the child;
    "compensation": the parent's undo of the child."""

    saga_id: UUID
    step: str = Field(min_length=1, max_length=200)
    command_id: UUID
    kind: Literal["action", "compensation"] = "action"


class StartSaga(_Wire):
    """`sagas` exchange, routing key `start`. `key` is the caller's idempotency key."""

    saga: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)
    input: dict[str, Any]
    version: int | None = Field(None, ge=1, description="Pin a version; newest when omitted.")
    # Set when a parent saga's child step starts this one.
    parent: ParentRef | None = None


def _one_target_schema(schema: dict[str, Any]) -> None:
    """`CancelSaga._one_target` in its JSON Schema: a string `key` or a string `saga_id`,
    not both (a null one counts as absent)."""
    schema["oneOf"] = [
        {"required": [field], "properties": {field: {"type": "string"}}}
        for field in ("key", "saga_id")
    ]


class _SagaTarget(_Wire):
    """A message for sagas already started: by the start's key (optionally with the saga
    name) or by saga_id."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_one_target_schema)

    key: str | None = Field(None, min_length=1, max_length=MAX_KEY_LENGTH)
    saga: str | None = Field(None, min_length=1, max_length=100)
    saga_id: UUID | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _SagaTarget:
        if (self.key is None) == (self.saga_id is None):
            raise ValueError("give exactly one of 'key' or 'saga_id'")
        return self


class CancelSaga(_SagaTarget):
    """`sagas` exchange, routing key `cancel`: by the start's key (optionally with the saga
    name) or by saga_id."""

    reason: str = Field("cancelled", max_length=1000)
    # Set when a parent saga undoes its child step: a completed child is then compensated
    # too, and the child answers the parent's compensation once it is undone.
    parent: ParentRef | None = None


class SignalSaga(_SagaTarget):
    """`sagas` exchange, routing key `signal`: a signal for a saga's wait step named
    `signal`, by the start's key (optionally with the saga name) or by saga_id. `signal_id`
    is the sender's idempotency key: the same signal sent again (a retried webhook) changes
    nothing. `payload` becomes the wait step's result."""

    signal: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[a-z][a-z0-9_]*$")
    signal_id: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)
    payload: dict[str, Any] = Field(default_factory=dict)


class Command(_Wire):
    """`saga.commands` exchange, routing key = the command name.

    Unknown fields are ignored, as in replies: commands come from the engine, and a field a
    newer orchestrator adds must not make this participant dead-letter the command. A field
    added later is left out of the body while unset, for participants older than this rule.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    command_id: UUID
    saga_id: UUID
    saga: str
    step: str
    kind: Literal["action", "compensation"]
    attempt: int = Field(ge=1)
    idempotency_key: str
    # The saga's input, or what the step's `payload=` function built from it and earlier
    # results; the same in every attempt and in the compensation.
    payload: dict[str, Any]
    # Do not start the command after this moment (the step's schedule-to-start window, or
    # its whole timeout): the orchestrator has stopped waiting for this attempt by then.
    expires_at: datetime
    # Seconds the attempt may run from its start (start-to-close); heartbeats do not extend
    # it. The participant cancels a handler that reaches it and answers a timeout failure.
    timeout: float | None = Field(None, gt=0)
    # Seconds the orchestrator waits between heartbeats of the started attempt before it
    # treats the participant as dead; heartbeat more often (a third of it). Optional on the
    # wire (older senders): without it, heartbeats only carry progress.
    heartbeat_timeout: float | None = Field(None, gt=0, exclude_if=lambda v: v is None)
    # Send a heartbeat as soon as the command is taken: the step has a schedule-to-start or
    # heartbeat timeout, and only that heartbeat tells the orchestrator the command started.
    report_start: bool = False
    # The details of the last heartbeat of an earlier attempt (a checkpoint to resume from).
    progress: Any = None
    # A map step's item (the step is then named `<map step>[<n>]`): the piece of work this
    # command is for. Null for other steps.
    item: Any = None
    # In a compensation of a step that declares its result's model (`result=`): the result
    # the action it undoes replied with. Absent otherwise, and when there is none: the action
    # never ran, timed out, failed, or replied without a result.
    action_result: Any = Field(None, exclude_if=lambda v: v is None)
    # The definition version the saga runs on: a worker hosting several versions of a local
    # step runs the one the saga started with. Optional on the wire (older senders).
    version: int | None = Field(None, ge=1)
    # Not part of the body: the routing key. Kept on the model so the outbox holds one object.
    command: str = Field(exclude=True)


class ReplyError(_Wire):
    type: str = Field("error", max_length=200)
    message: str = Field("", max_length=10_000)
    retryable: bool = True


class Reply(_Wire):
    """Default exchange, routing key `saga.replies`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    command_id: UUID
    saga_id: UUID
    step: str
    outcome: Literal["success", "failure", "heartbeat"]
    result: Any = None
    error: ReplyError | None = None


class OutcomeEvent(_Wire):
    """`saga.events` exchange, routing key `<saga>.<status>`.

    `<saga>.rejected` announces a start that created no saga, so its `saga_id` is None: a
    semantic lock refused it, or it was dead-lettered as an unknown saga, invalid input or
    an invalid start body (`error.type` says which). `saga` is None (routing key
    `saga.rejected`) when that body named no valid saga name, and `key` None when it had no
    usable key."""

    saga_id: UUID | None
    saga: str | None
    key: str | None
    status: str  # an Outcome's value (orchestrator/event_names.py)
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def routing_key(self) -> str:
        return f"{self.saga or 'saga'}.{self.status}"


class Exchange:
    """Logical exchange names of wire protocol v1; the transport may prefix them."""

    SAGAS = "sagas"
    COMMANDS = "saga.commands"
    EVENTS = "saga.events"
    DEAD = "saga.dead"
    DEFAULT = ""  # the default exchange: routing key = queue name (replies)


REPLY_QUEUE = "saga.replies"


@dataclass(frozen=True)
class OutboxMessage:
    """A message written in the transaction that decided it, published after commit."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    reply_to: str | None = None
    id: int | None = None  # assigned by the store
    # Message headers to send along: the saga's W3C trace context (orchestrator/trace.py).
    headers: Mapping[str, str] | None = None
