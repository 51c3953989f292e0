"""`start` and `cancel`: one outbox row each, written in the caller's transaction.

The row holds the message exactly as it will travel (StartSaga / CancelSaga of wire protocol
v1, validated here with the engine's own limits), so a start that could never be sent fails
at the call, in the service, with the transaction still the caller's to roll back.

With `definitions` (the saga definitions, where the service can import them) a start is also
checked against them: the saga's name (and pinned version) and its input model. Without
them the engine is the judge: a start naming an unknown saga or carrying input its model
refuses is dead-lettered and announced as `<saga>.rejected` on the `saga.events` exchange
(docs/starter.md says how to listen for it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from adapters.rabbitmq.delivery import MAX_BODY_BYTES
from adapters.rabbitmq.storable import check_storable
from adapters.starter.connections import Connection, execute, require_transaction
from adapters.starter.table import OUTBOX, OutboxTable
from orchestrator.errors import InvalidInput, Poison, SagaError, UnknownSaga
from orchestrator.messages import CancelSaga, StartSaga


class InvalidRequest(SagaError):
    """A start or cancel that the engine would refuse whatever its saga: a field breaks the
    wire protocol's limits, or the body is too large or unstorable. Says which and why."""


class Definition(Protocol):
    """What a start is checked against: a saga definition (`orchestrator.Saga`) has these."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def input(self) -> type[BaseModel]: ...


async def start(
    conn: Connection,
    saga: str,
    *,
    key: str,
    input: Mapping[str, Any] | BaseModel,
    version: int | None = None,
    headers: Mapping[str, str] | None = None,
    definitions: Iterable[Definition] | None = None,
    table: OutboxTable = OUTBOX,
) -> str:
    """Write a start of `saga` into the outbox, in `conn`'s transaction; return its message
    id. `key` is the idempotency key (one saga per key, however often it is sent); `version`
    pins a definition version (the newest the engine loads otherwise); `headers` ride along
    as AMQP headers (e.g. W3C `traceparent`). Raises InvalidRequest, or with `definitions`
    UnknownSaga / InvalidInput, before anything is written."""
    payload = input.model_dump(mode="json") if isinstance(input, BaseModel) else dict(input)
    try:
        message = StartSaga(saga=saga, key=key, input=payload, version=version)
    except ValidationError as exc:
        raise InvalidRequest(f"cannot start saga {saga!r}: {_problems(exc)}") from None
    if definitions is not None:
        _check(list(definitions), message)
    return await _write(conn, "start", message, key=key, saga=saga, headers=headers, table=table)


async def cancel(
    conn: Connection,
    *,
    key: str,
    saga: str | None = None,
    reason: str = "cancelled",
    headers: Mapping[str, str] | None = None,
    table: OutboxTable = OUTBOX,
) -> str:
    """Write a cancel of the saga started with `key` (of saga `saga`, when given) into the
    outbox, in `conn`'s transaction; return its message id. It leaves after every earlier
    row of the same key, so a start and a cancel written in that order arrive in it."""
    try:
        message = CancelSaga(key=key, saga=saga, reason=reason)
    except ValidationError as exc:
        raise InvalidRequest(f"cannot cancel {key!r}: {_problems(exc)}") from None
    return await _write(conn, "cancel", message, key=key, saga=saga, headers=headers, table=table)


async def _write(
    conn: Connection,
    kind: Literal["start", "cancel"],
    message: BaseModel,
    *,
    key: str,
    saga: str | None,
    headers: Mapping[str, str] | None,
    table: OutboxTable,
) -> str:
    body = message.model_dump_json(exclude_none=True).encode()
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(
            f"the {kind} body is {len(body)} bytes; the engine reads at most {MAX_BODY_BYTES} "
            "by default (SAGA_MAX_MESSAGE_BYTES): keep large data in your database and send "
            "its id"
        )
    try:
        check_storable(body)
    except Poison as exc:
        raise InvalidRequest(f"cannot {kind} {key!r}: {exc}") from None
    await require_transaction(conn, f"starter.{kind}")
    message_id = uuid.uuid4().hex
    await execute(
        conn,
        f"INSERT INTO {table.qualified} (kind, key, saga, body, message_id, headers) "
        "VALUES (%(kind)s, %(key)s, %(saga)s, %(body)s::jsonb, %(message_id)s, "
        "%(headers)s::jsonb)",
        {
            "kind": kind,
            "key": key,
            "saga": saga,
            "body": body.decode(),
            "message_id": message_id,
            "headers": json.dumps(dict(headers)) if headers else None,
        },
    )
    return message_id


def _check(definitions: list[Definition], message: StartSaga) -> None:
    """As the engine checks a start against the definitions it loads (orchestrator/registry)."""
    versions = {d.version: d for d in definitions if d.name == message.saga}
    if not versions:
        known = ", ".join(sorted({d.name for d in definitions})) or "none"
        raise UnknownSaga(
            f"no saga named {message.saga!r} among the definitions given (known: {known}): "
            "fix the name, or pass its definition; nothing was written"
        )
    chosen = versions.get(message.version or max(versions))
    if chosen is None:
        raise UnknownSaga(
            f"saga {message.saga!r} has no version {message.version} among the definitions "
            f"given (versions: {', '.join(map(str, sorted(versions)))}); nothing was written"
        )
    try:
        chosen.input.model_validate(message.input)
    except ValidationError as exc:
        raise InvalidInput(
            f"input for saga {message.saga!r} v{chosen.version} is invalid: {_problems(exc)}; "
            "nothing was written"
        ) from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
