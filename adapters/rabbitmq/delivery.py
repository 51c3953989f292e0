"""A delivered message as a handler sees it (`Delivery`), and reading its body: JSON only,
within a size limit, validated into a model, or `Poison` saying why not.

A poison message is dead-lettered with its reason (adapters/rabbitmq/consumer.py), which
operators read in terminals and log viewers: `poison_reason` and `printable` keep it short
and printable.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic_core
from aio_pika.abc import AbstractIncomingMessage
from pydantic import BaseModel, ValidationError

from adapters.rabbitmq.storable import check_storable
from orchestrator.errors import Poison

M = TypeVar("M", bound=BaseModel)

JSON = "application/json"
# Far above any saga message; a body this large is an accident or an attack, not a command.
# The default of SAGA_MAX_MESSAGE_BYTES (docs/security.md).
MAX_BODY_BYTES = 1024 * 1024
# A dead-letter reason is cut at this length and lists this many validation errors at most.
MAX_REASON_CHARS = 1000
MAX_REASON_ERRORS = 5


@dataclass(frozen=True)
class Delivery:
    """What a handler sees of a message: enough to parse and answer it, no broker handle."""

    body: bytes
    routing_key: str
    exchange: str
    queue: str
    content_type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    # The consumer's size limit: `parse` refuses a larger body unread.
    max_bytes: int = MAX_BODY_BYTES
    # Acknowledge the message now, before the handler returns: from then on the handler
    # alone answers for it (a crash no longer brings it back, the broker's consumer timeout
    # no longer applies). True once acked. None where the consumer does not offer it.
    take: Callable[[], Awaitable[bool]] | None = field(default=None, compare=False)

    @property
    def delivery_count(self) -> int:
        """How often a quorum queue handed this message out before (0 the first time)."""
        count = self.headers.get("x-delivery-count", 0)
        return count if isinstance(count, int) else 0

    @classmethod
    def of(
        cls, message: AbstractIncomingMessage, queue: str, max_bytes: int = MAX_BODY_BYTES
    ) -> Delivery:
        return cls(
            body=message.body,
            routing_key=message.routing_key or "",
            exchange=message.exchange or "",
            queue=queue,
            content_type=message.content_type,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            headers=dict(message.headers or {}),
            redelivered=bool(message.redelivered),
            max_bytes=max_bytes,
        )


def parse(
    model: type[M],
    message: Delivery | bytes,
    *,
    fields: Mapping[str, Any] | None = None,
    max_bytes: int | None = None,
) -> M:
    """Validate a JSON body into `model`, or raise `Poison` saying what is wrong with it.

    Given a `Delivery`, its content type must be JSON (or absent); anything else, pickle
    above all, is refused unread, and so is a body over its consumer's size limit
    (SAGA_MAX_MESSAGE_BYTES; `max_bytes` overrides it). `fields` are set on top of the
    body's (e.g. a command's name, which travels as the routing key).
    """
    if isinstance(message, Delivery):
        _check_content_type(message.content_type)
        body = message.body
        limit = message.max_bytes if max_bytes is None else max_bytes
    else:
        body = message
        limit = MAX_BODY_BYTES if max_bytes is None else max_bytes
    if len(body) > limit:
        raise Poison(f"body of {len(body)} bytes exceeds the limit of {limit} bytes")
    check_storable(body)
    try:
        if fields is None:
            return model.model_validate_json(body)
        try:
            data = pydantic_core.from_json(body)
        except ValueError as exc:
            raise Poison(f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise Poison(f"body: expected a JSON object, got {type(data).__name__}")
        return model.model_validate({**data, **fields})
    except ValidationError as exc:
        raise Poison(describe_invalid(exc)) from exc


def json_object(message: Delivery) -> dict[str, Any] | None:
    """The body as a JSON object when `parse` reads it as one (JSON content type, within the
    size limit, storable), else None: what may be read of a message `parse` refused, to tell
    its sender why. A body that is no such object is not read at all (pickle, say)."""
    try:
        _check_content_type(message.content_type)
        if len(message.body) > message.max_bytes:
            return None
        check_storable(message.body)
        data = pydantic_core.from_json(message.body)
    except (Poison, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_invalid(exc: ValidationError) -> str:
    """A short, human-readable account of why a body did not validate."""
    errors = exc.errors(include_url=False, include_input=False)
    parts: list[str] = []
    for error in errors[:MAX_REASON_ERRORS]:
        if error["type"] == "json_invalid":
            return f"invalid JSON: {error.get('ctx', {}).get('error', error['msg'])}"
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"field {where}: {error['msg']}" if where else f"body: {error['msg']}")
    if len(errors) > MAX_REASON_ERRORS:
        parts.append(f"and {len(errors) - MAX_REASON_ERRORS} more error(s)")
    return "; ".join(parts)


def poison_reason(exc: BaseException) -> str | None:
    """The dead-letter reason if `exc` means the message can never be processed, else None."""
    if isinstance(exc, Poison):
        return printable(str(exc) or "poison")
    if isinstance(exc, ValidationError):
        return printable(describe_invalid(exc))
    if isinstance(exc, json.JSONDecodeError):
        return printable(f"invalid JSON: {exc}")
    if isinstance(exc, UnicodeDecodeError):
        return f"invalid UTF-8: {exc}"
    return None


def printable(text: str) -> str:
    """`text` with its unprintable characters escaped (ESC as \\x1b): a reason quotes the
    sender's field names, and operators read it in terminals and log viewers."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _check_content_type(content_type: str | None) -> None:
    if content_type is None or content_type == "":
        return
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != JSON:
        raise Poison(f"content type {content_type} is not accepted: JSON only")
