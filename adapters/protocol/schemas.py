"""The JSON Schema of every message body of wire protocol v1, generated from the pydantic
models of orchestrator/messages.py.

A message the engine accepts (start, cancel, signal, reply) is described as the model validates
it; one it sends (command, outcome event) as the model writes it, so fields left out while unset
are optional and a field the participant never sees (a command's routing key) is absent. The
heartbeat and the `<saga>.rejected` event are variants of the reply and the outcome event: the
same schema, narrowed to what those messages carry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from orchestrator.event_names import Outcome
from orchestrator.messages import (
    CancelSaga,
    Command,
    OutcomeEvent,
    Reply,
    SignalSaga,
    StartSaga,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SPEC = "docs/protocol-idempotency.md"

Mode = Literal["validation", "serialization"]


def _schema(model: type[BaseModel], mode: Mode, title: str, description: str) -> dict[str, Any]:
    generated = model.model_json_schema(mode=mode)
    generated.pop("title", None)
    generated.pop("description", None)
    return {
        "$schema": DIALECT,
        "title": title,
        "description": f"{description} Wire protocol v1; the rules around it: {SPEC}.",
        **generated,
    }


def start() -> dict[str, Any]:
    return _schema(
        StartSaga,
        "validation",
        "Start a saga",
        "Exchange `sagas`, routing key `start`. `key` is the sender's idempotency key: one "
        "saga per (saga, key). `parent` is set when a parent saga's child step starts it.",
    )


def cancel() -> dict[str, Any]:
    return _schema(
        CancelSaga,
        "validation",
        "Cancel a saga",
        "Exchange `sagas`, routing key `cancel`: by the start's `key` (optionally with the "
        "saga's name) or by `saga_id`, exactly one of the two.",
    )


def signal() -> dict[str, Any]:
    return _schema(
        SignalSaga,
        "validation",
        "Signal a saga",
        "Exchange `sagas`, routing key `signal`: the signal `signal` for the saga's wait step "
        "of that name, by the start's `key` (optionally with the saga's name) or by `saga_id`, "
        "exactly one of the two. `signal_id` is the sender's idempotency key: sending it again "
        "changes nothing. `payload` becomes the wait step's result. A signal the saga cannot "
        "take is announced as `<saga>.signal_refused`.",
    )


def command() -> dict[str, Any]:
    return _schema(
        Command,
        "serialization",
        "A command to a participant",
        "Exchange `saga.commands`, routing key the command name (`<service>.<command>`), "
        "queued in `commands.<service>`. Ignore fields you do not know: later releases add "
        "optional ones, and leave them out of the body while unset.",
    )


def reply() -> dict[str, Any]:
    return _schema(
        Reply,
        "validation",
        "A participant's reply",
        "Default exchange, routing key the command's `reply_to` property (`saga.replies`). "
        "`outcome` success (with `result`), failure (with `error`; without it the failure "
        "counts as retryable) or heartbeat.",
    )


def heartbeat() -> dict[str, Any]:
    schema = _schema(
        Reply,
        "validation",
        "A participant's heartbeat",
        "A reply with `outcome` heartbeat, sent while a command runs (at once when the "
        "command says `report_start`). `result` is optional progress, a checkpoint the next "
        "attempt receives as `progress`.",
    )
    schema["properties"]["outcome"] = {"const": "heartbeat", "title": "Outcome"}
    del schema["properties"]["error"]
    schema.pop("$defs", None)  # the error's shape: a heartbeat carries none
    return schema


def outcome_event() -> dict[str, Any]:
    schema = _schema(
        OutcomeEvent,
        "serialization",
        "An outcome event",
        "Exchange `saga.events`, routing key `<saga>.<status>`: how a saga ended (`result` "
        "holds the completed saga's step results, `error` why it did not complete), a cancel "
        "it refused (`cancel_refused`), a signal it refused (`signal_refused`: `error.reason` "
        "says why, `error.signal` and `error.signal_id` which), or a start that made no saga "
        "(`rejected`, see rejected-event.schema.json).",
    )
    schema["properties"]["status"] = {
        "enum": [o.value for o in Outcome],
        "title": "Status",
        "type": "string",
    }
    return schema


def rejected_event() -> dict[str, Any]:
    schema = outcome_event()
    schema["title"] = "A start that made no saga"
    schema["description"] = (
        "Exchange `saga.events`, routing key `<saga>.rejected` (`saga.rejected` when the start "
        "named no valid saga name): a semantic lock refused the start (`error.type` `locked` "
        "or `lock_wait_expired`), or it was dead-lettered (`unknown_saga`, `invalid_input`, "
        f"`invalid_start`). Wire protocol v1; the rules around it: {SPEC}."
    )
    properties = schema["properties"]
    properties["saga_id"] = {"type": "null", "title": "Saga Id"}
    properties["status"] = {"const": Outcome.REJECTED.value, "title": "Status"}
    properties["error"] = {
        "type": "object",
        "title": "Error",
        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        "required": ["type", "message"],
        "additionalProperties": True,
    }
    schema["required"] = [*schema["required"], "error"]
    return schema


# File name -> the schema; every message body of wire protocol v1.
SCHEMAS = {
    "start.schema.json": start,
    "cancel.schema.json": cancel,
    "signal.schema.json": signal,
    "command.schema.json": command,
    "reply.schema.json": reply,
    "heartbeat.schema.json": heartbeat,
    "outcome-event.schema.json": outcome_event,
    "rejected-event.schema.json": rejected_event,
}


def schemas() -> dict[str, dict[str, Any]]:
    return {name: build() for name, build in SCHEMAS.items()}
