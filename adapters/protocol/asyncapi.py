"""The AsyncAPI 3.0 document of wire protocol v1 on RabbitMQ: the exchanges, routing keys and
queues of adapters/rabbitmq/topology.py, the AMQP properties and headers every message carries,
and each message's body by reference to its JSON Schema (adapters/protocol/schemas.py).

The operations are the orchestrator's: it receives starts, cancels, signals and replies, and sends
commands, outcome events and dead letters. A participant does the mirror image (receives on its
command queue, sends replies), and so does a service that starts sagas (sends starts and
cancels, signals, receives outcome events).

AMQP has two kinds of message metadata: properties (`message_id`, `correlation_id`,
`reply_to`, `content_type`, `delivery_mode`) and the `headers` table (`traceparent`, the
dead-letter headers). AsyncAPI has one `headers` schema per message, so both are described
there, each property named as aio-pika names it and marked as a property in its description.
"""

from __future__ import annotations

from typing import Any

from adapters.rabbitmq.consumer import (
    DEAD_REASON_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_QUEUE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
)
from adapters.rabbitmq.topology import (
    CANCELS_QUEUE,
    COMMAND_QUEUE_PREFIX,
    DEAD_QUEUE,
    EXCHANGE_TYPES,
    REPLIES_QUEUE,
    REQUESTS_QUEUE,
    Topology,
)
from orchestrator import trace
from orchestrator.messages import PROTOCOL_VERSION, Exchange

AMQP_BINDING = "0.3.0"
JSON = "application/json"

DESCRIPTION = f"""\
Wire protocol v1 of the saga orchestrator: how services in any language start and cancel sagas,
take commands and answer them, and hear how sagas ended. Every exchange and queue is durable,
every queue a quorum queue (arguments in `x-amqp-arguments`), every message persistent with a
JSON body (`content_type: {JSON}`; anything else is dead-lettered unread).

A deployment may prefix every exchange and queue name (`SAGA_AMQP_PREFIX`): the default
exchange and routing keys are never prefixed.

The operations are the orchestrator's. A participant service receives on `commandQueue` and
sends on `replies` (to the command's `reply_to`); a service that starts sagas sends on
`sagaStarts`, `sagaCancels` and `sagaSignals` and binds a queue of its own to `events`.

The rules a participant follows (idempotency, expiry, heartbeats, compensations): \
docs/protocol-idempotency.md. The bodies' JSON Schemas are the files next to this one.
"""


def _exchange(logical: str) -> dict[str, Any]:
    return {
        "name": logical,
        "type": EXCHANGE_TYPES[logical].value,
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }


def _routed(logical_exchange: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": _exchange(logical_exchange),
            "bindingVersion": AMQP_BINDING,
        }
    }


def _queue(logical: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "queue",
            "queue": {
                "name": logical,
                "durable": True,
                "exclusive": False,
                "autoDelete": False,
                "vhost": "/",
            },
            "bindingVersion": AMQP_BINDING,
        }
    }


def _queue_channel(
    logical: str, description: str, messages: list[str], bound: list[tuple[str, str]]
) -> dict[str, Any]:
    """A queue; `bound`: (exchange, binding key) pairs routing into it (none: only the
    default exchange, by the queue's name)."""
    return {
        "address": logical,
        "description": description,
        "messages": _refs(messages),
        "bindings": _queue(logical),
        "x-amqp-arguments": Topology().queue_arguments(logical),
        "x-amqp-bindings": [{"exchange": e, "routingKey": key} for e, key in bound],
    }


def _refs(messages: list[str]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/messages/{name}"} for name in messages}


def _parameter(description: str) -> dict[str, Any]:
    return {"description": description}


def channels() -> dict[str, Any]:
    service = _parameter("The participant service: the first segment of the command name.")
    return {
        "sagaStarts": {
            "address": "start",
            "description": "Start a saga: publish to exchange `sagas` with routing key `start`.",
            "messages": _refs(["start"]),
            "bindings": _routed(Exchange.SAGAS),
        },
        "sagaCancels": {
            "address": "cancel",
            "description": "Cancel a saga: publish to exchange `sagas` with routing key `cancel`.",
            "messages": _refs(["cancel"]),
            "bindings": _routed(Exchange.SAGAS),
        },
        "sagaSignals": {
            "address": "signal",
            "description": "Signal a saga's wait step: publish to exchange `sagas` with routing "
            "key `signal`.",
            "messages": _refs(["signal"]),
            "bindings": _routed(Exchange.SAGAS),
        },
        "requestsQueue": _queue_channel(
            REQUESTS_QUEUE,
            "The orchestrator's queue of starts.",
            ["start"],
            [(Exchange.SAGAS, "start")],
        ),
        "cancelsQueue": _queue_channel(
            CANCELS_QUEUE,
            "The orchestrator's queue of cancels and signals (apart from the starts, so they "
            "never wait behind them).",
            ["cancel", "signal"],
            [(Exchange.SAGAS, "cancel"), (Exchange.SAGAS, "signal")],
        ),
        "commands": {
            "address": "{service}.{command}",
            "description": "Commands to participants: exchange `saga.commands`, routing key "
            "the command name.",
            "parameters": {"service": service, "command": _parameter("The command's name.")},
            "messages": _refs(["command"]),
            "bindings": _routed(Exchange.COMMANDS),
        },
        "commandQueue": {
            **_queue_channel(
                COMMAND_QUEUE_PREFIX + "{service}",
                "A participant service's queue of commands, declared by the orchestrator for "
                "every command its sagas use (and by the participant), bound with "
                "`{service}.#`. Consume with manual acks.",
                ["command"],
                [(Exchange.COMMANDS, "{service}.#")],
            ),
            "parameters": {"service": service},
        },
        "replies": _queue_channel(
            REPLIES_QUEUE,
            "Replies and heartbeats: publish to the default exchange with routing key the "
            "command's `reply_to` (a deployment may prefix the queue's name: use the property).",
            ["reply", "heartbeat"],
            [],
        ),
        "events": {
            "address": "{saga}.{status}",
            "description": "Outcome events: exchange `saga.events`, routing key "
            "`<saga>.<status>`. Bind a queue of your own, e.g. to `order.*` or `*.rejected`.",
            "parameters": {
                "saga": _parameter("The saga's name (`saga` when a rejected start named none)."),
                "status": _parameter("The event's status."),
            },
            "messages": _refs(["outcomeEvent", "rejectedEvent"]),
            "bindings": _routed(Exchange.EVENTS),
        },
        "deadLetters": {
            "address": None,
            "description": "Messages that cannot be processed, with the original routing key: "
            "a body that is not a valid message (dead-lettered by the consumer, with "
            f"`{DEAD_REASON_HEADER}`) or one past the queue's delivery limit (by the broker).",
            "messages": _refs(["deadLetter"]),
            "bindings": _routed(Exchange.DEAD),
        },
        "deadQueue": _queue_channel(
            DEAD_QUEUE,
            "Where dead letters wait for an operator.",
            ["deadLetter"],
            [(Exchange.DEAD, "")],
        ),
    }


def _operation(action: str, channel: str, messages: list[str], summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
    }


def operations() -> dict[str, Any]:
    publish = {"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": AMQP_BINDING}}
    consume = {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}}
    return {
        "receiveStart": {
            **_operation("receive", "requestsQueue", ["start"], "Start a saga, once per key."),
            "bindings": consume,
        },
        "receiveCancel": {
            **_operation("receive", "cancelsQueue", ["cancel"], "Cancel a saga."),
            "bindings": consume,
        },
        "receiveSignal": {
            **_operation(
                "receive", "cancelsQueue", ["signal"], "Deliver a signal to a saga's wait step."
            ),
            "bindings": consume,
        },
        "sendCommand": {
            **_operation("send", "commands", ["command"], "Send a step's action or compensation."),
            "bindings": publish,
            "reply": {
                "address": {
                    "location": "$message.header#/reply_to",
                    "description": "The command's `reply_to` property.",
                },
                "channel": {"$ref": "#/channels/replies"},
                "messages": [
                    {"$ref": "#/channels/replies/messages/reply"},
                    {"$ref": "#/channels/replies/messages/heartbeat"},
                ],
            },
        },
        "receiveReply": {
            **_operation("receive", "replies", ["reply", "heartbeat"], "A participant's answer."),
            "bindings": consume,
        },
        "sendOutcomeEvent": {
            **_operation(
                "send",
                "events",
                ["outcomeEvent", "rejectedEvent"],
                "Announce how a saga ended, a refused cancel or signal, or a start that made "
                "no saga.",
            ),
            "bindings": {
                "amqp": {"deliveryMode": 2, "mandatory": False, "bindingVersion": AMQP_BINDING}
            },
        },
        "sendDeadLetter": {
            **_operation(
                "send",
                "deadLetters",
                ["deadLetter"],
                "Move aside a message that cannot be processed.",
            ),
            "bindings": publish,
        },
    }


def _string(description: str, **more: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **more}


PROPERTY = "AMQP property"
TRACE = {
    trace.TRACEPARENT: _string(
        "Header: W3C trace context of the saga (https://www.w3.org/TR/trace-context/). Sent "
        "with a start, it is carried on by every message of the saga; an invalid one is "
        "ignored. With spans on, each message's parent is one of the saga's spans (a "
        "command's: its attempt's) and a saga started without one has a trace of its own.",
        pattern="^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$",
    ),
    trace.TRACESTATE: _string("Header: W3C trace state, with `traceparent`.", maxLength=512),
}
COMMON = {
    "content_type": {"const": JSON, "description": f"{PROPERTY} `content-type`."},
    "delivery_mode": {"const": 2, "description": f"{PROPERTY} `delivery-mode`: persistent."},
    "message_id": _string(f"{PROPERTY} `message-id`."),
    "correlation_id": _string(f"{PROPERTY} `correlation-id`."),
    **TRACE,
}


def _headers(description: str, required: list[str], **more: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {**COMMON, **more},
        "required": ["content_type", *required],
    }


def headers() -> dict[str, Any]:
    delivery_count = {
        "type": "integer",
        "minimum": 0,
        "description": "Header set by the quorum queue: how often the message was delivered "
        "before.",
    }
    dead = {
        DEAD_REASON_HEADER: _string("Header: why the consumer could not process the message."),
        ORIGINAL_QUEUE_HEADER: _string("Header: the queue the message was consumed from."),
        ORIGINAL_EXCHANGE_HEADER: _string("Header: the exchange it was published to."),
        ORIGINAL_ROUTING_KEY_HEADER: _string("Header: its routing key."),
        "x-first-death-reason": _string(
            "Header set by the broker when it dead-letters (`delivery_limit`: the queue's "
            "`x-delivery-limit` was reached); `x-first-death-queue`, `x-first-death-exchange` "
            "and `x-death` come with it."
        ),
    }
    return {
        "requestHeaders": _headers(
            "A start or a cancel: `message_id` is optional (the orchestrator deduplicates by "
            "the body's key).",
            [],
        ),
        "commandHeaders": _headers(
            "A command: `message_id` is the command's `command_id`; `reply_to` names the queue "
            "to answer to.",
            ["message_id", "reply_to", "delivery_mode"],
            reply_to=_string(f"{PROPERTY} `reply-to`: where the reply and heartbeats go."),
            **{"x-delivery-count": delivery_count},
        ),
        "replyHeaders": _headers(
            "A reply or a heartbeat: the orchestrator reads only the body; set `correlation_id` "
            "to the command's `command_id` for debugging.",
            [],
        ),
        "eventHeaders": _headers(
            "An outcome event: `message_id` is the same for every copy of one event.",
            ["message_id", "delivery_mode"],
        ),
        "deadLetterHeaders": {
            **_headers(
                "A dead letter: the original message's properties and headers, and why.",
                [],
                **dead,
            ),
            "required": [],
            "anyOf": [{"required": [DEAD_REASON_HEADER]}, {"required": ["x-first-death-reason"]}],
        },
    }


def _message(
    title: str, summary: str, payload: str | None, header: str, **more: Any
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": title.replace(" ", ""),
        "title": title,
        "summary": summary,
        "contentType": JSON,
        "headers": {"$ref": f"#/components/schemas/{header}"},
        **more,
    }
    if payload is not None:
        message["payload"] = {"$ref": payload}
    return message


def messages() -> dict[str, Any]:
    by_command = {"location": "$message.payload#/command_id"}
    return {
        "start": _message(
            "Start saga",
            "Start a saga, once per (saga, key).",
            "start.schema.json",
            "requestHeaders",
        ),
        "cancel": _message(
            "Cancel saga",
            "Cancel a saga by its start's key or its id.",
            "cancel.schema.json",
            "requestHeaders",
        ),
        "signal": _message(
            "Signal saga",
            "A signal for a saga's wait step, by its start's key or its id.",
            "signal.schema.json",
            "requestHeaders",
        ),
        "command": _message(
            "Command",
            "An attempt of a step's action or compensation.",
            "command.schema.json",
            "commandHeaders",
            correlationId=by_command,
        ),
        "reply": _message(
            "Reply",
            "The answer to one command: success or failure.",
            "reply.schema.json",
            "replyHeaders",
            correlationId=by_command,
        ),
        "heartbeat": _message(
            "Heartbeat",
            "A command is being worked on (and how far it got).",
            "heartbeat.schema.json",
            "replyHeaders",
            correlationId=by_command,
        ),
        "outcomeEvent": _message(
            "Outcome event",
            "How a saga ended, or a cancel or signal it refused.",
            "outcome-event.schema.json",
            "eventHeaders",
        ),
        "rejectedEvent": _message(
            "Rejected start",
            "A start that made no saga, and why.",
            "rejected-event.schema.json",
            "eventHeaders",
        ),
        "deadLetter": _message(
            "Dead letter",
            "The original message, body untouched (it may be no valid message at all).",
            None,
            "deadLetterHeaders",
        ),
    }


def document() -> dict[str, Any]:
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Saga orchestrator wire protocol",
            "version": str(PROTOCOL_VERSION),
            "description": DESCRIPTION,
        },
        "defaultContentType": JSON,
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "The deployment's RabbitMQ (`SAGA_AMQP_URL`).",
            }
        },
        "channels": channels(),
        "operations": operations(),
        "components": {"messages": messages(), "schemas": headers()},
    }
