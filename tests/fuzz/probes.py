"""Hypothesis strategies for bad (and oddly good) AMQP messages, each with what must become
of it: dead-lettered with a reason matching a pattern, or — well-formed but naming
something unknown — acknowledged and handled as docs/protocol-idempotency.md says.

Every probe starts from a valid message of its kind (start, cancel, signal, reply, command) and
breaks it one way: bytes that are not JSON, invalid UTF-8, a field of the wrong type or
missing or extra, JSON that is not an object, nesting past the parser's limit, a body over
SAGA_MAX_MESSAGE_BYTES, a content type other than JSON (pickle above all), a NUL character
or a number that is not finite (neither can be stored by PostgreSQL) — or keeps it valid and
forges what it refers to: unknown sagas, versions, keys, saga ids, steps, command ids,
attempt numbers, command names, a missing `reply_to`, a signal for a finished saga.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from hypothesis import strategies as st

JSON = "application/json"
Queue = Literal["requests", "replies", "commands"]
SAGA = "fuzz_ticket"
SERVICE = "fuzzdesk"
# Handlers of the fuzz participant (conftest.py): `echo` has no effect, so a valid command
# with forged ids may run it as often as hypothesis likes.
ECHO = f"{SERVICE}.echo"
HANDLED = frozenset({f"{SERVICE}.file", f"{SERVICE}.stamp", f"{SERVICE}.unfile", ECHO})


# -- what must happen to a probe ---------------------------------------------------------


@dataclass(frozen=True)
class Dead:
    """Dead-lettered by our consumer: header x-saga-dead-reason matches `reason` (a regex)."""

    reason: str


@dataclass(frozen=True)
class UnknownSagaReply:
    """A well-formed reply naming no saga: acked, logged as `reply_ignored`, nothing stored."""

    command_id: str


@dataclass(frozen=True)
class StrayReply:
    """A well-formed reply to a real saga for a command it never sent: acked, recorded in
    that saga's history as `reply_ignored` (a heartbeat for one of its steps is not
    recorded: transition/replies.py), the saga unchanged."""

    saga_id: str
    command_id: str
    recorded: bool


@dataclass(frozen=True)
class Answered:
    """A well-formed command: the participant answers it at its `reply_to` (our spy queue)."""

    command_id: str
    outcome: Literal["success", "failure"]
    error_type: str | None = None


@dataclass(frozen=True)
class HeldCancel:
    """A well-formed cancel by a key no saga has (yet): held, so that a start with that key
    arriving later is cancelled (docs/architecture.md), acked, and logged."""

    key: str


@dataclass(frozen=True)
class RefusedSignal:
    """A well-formed signal the saga cannot take (no such saga, a finished one): acked,
    refused and announced as `<saga>.signal_refused` (docs/signals.md), logged with its id."""

    signal_id: str


Expect = Dead | UnknownSagaReply | StrayReply | Answered | HeldCancel | RefusedSignal


@dataclass(frozen=True)
class Probe:
    what: str  # for failure messages: "start: wrong type of key"
    queue: Queue
    routing_key: str  # requests: start / cancel / other; commands: the command name
    body: bytes
    expect: Expect
    content_type: str | None = JSON
    # Commands only: where the participant answers; None sends none (itself a probe).
    reply_to: str | None = None


@dataclass(frozen=True)
class Context:
    """What the strategies may refer to: a real, finished saga and where answers go."""

    saga_id: str  # a completed fuzz_ticket saga
    steps: tuple[str, ...]
    spy: str  # the queue the participant answers probes at
    max_bytes: int  # the system's SAGA_MAX_MESSAGE_BYTES


# -- valid messages of each kind, the starting points --------------------------------------

uuids = st.uuids().map(str)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
# Free-form JSON (an input, a payload, a result) that PostgreSQL can store.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)


def _future() -> str:
    return (datetime.now(UTC) + timedelta(minutes=10)).isoformat()


def _past() -> str:
    return (datetime.now(UTC) - timedelta(minutes=10)).isoformat()


@st.composite
def valid_start(draw: st.DrawFn) -> dict[str, Any]:
    extra = draw(json_objects)
    return {
        "saga": SAGA,
        "key": f"fz-{draw(uuids)}",
        "input": {**extra, "ticket_id": draw(texts)},
    }


@st.composite
def valid_cancel(draw: st.DrawFn) -> dict[str, Any]:
    target = (
        {"key": f"fz-nobody-{draw(uuids)}"} if draw(st.booleans()) else {"saga_id": draw(uuids)}
    )
    return {**target, "reason": draw(texts)}


@st.composite
def valid_signal(draw: st.DrawFn) -> dict[str, Any]:
    target = (
        {"key": f"fz-nobody-{draw(uuids)}"} if draw(st.booleans()) else {"saga_id": draw(uuids)}
    )
    return {
        **target,
        "signal": "approve",
        "signal_id": f"sig-{draw(uuids)}",
        "payload": draw(json_objects),
    }


@st.composite
def valid_reply(draw: st.DrawFn, saga_id: str | None = None) -> dict[str, Any]:
    outcome = draw(st.sampled_from(["success", "failure", "heartbeat"]))
    reply: dict[str, Any] = {
        "command_id": draw(uuids),
        "saga_id": saga_id or draw(uuids),
        "step": draw(texts),
        "outcome": outcome,
    }
    if outcome == "failure" and draw(st.booleans()):
        reply["error"] = {"type": "declined", "message": draw(texts), "retryable": False}
    else:
        reply["result"] = draw(json_objects | st.none())
    return reply


@st.composite
def valid_command(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "command_id": draw(uuids),
        "saga_id": draw(uuids),
        "saga": draw(texts),
        "step": draw(texts),
        "kind": draw(st.sampled_from(["action", "compensation"])),
        "attempt": draw(st.integers(1, 10**9)),
        "idempotency_key": draw(texts),
        "payload": draw(json_objects),
        "expires_at": _future(),
    }


# Per kind: required fields and values of a type each of them refuses (pydantic's lax mode
# coerces some look-alikes, e.g. "1" to an int or a number to a datetime: none of those here).
NOT_STR: list[object] = [1, 2.5, True, None, [], {}]
NOT_UUID = ["not-a-uuid", "1234", 7, None, [], {}]
NOT_OBJECT = [[], "x", 3, True, None]
REQUIRED: dict[str, dict[str, list[Any]]] = {
    "start": {"saga": NOT_STR, "key": NOT_STR, "input": NOT_OBJECT},
    # Not None for saga_id: that is its default, and a cancel by key stays valid with it.
    "cancel": {"reason": NOT_STR, "saga_id": ["not-a-uuid", "1234", 7, [], {}]},
    # Not payload: it has a default, so a signal without one is valid.
    "signal": {"signal": ["Not-A-Name", "", 1, None, [], {}], "signal_id": ["", *NOT_STR]},
    "reply": {
        "command_id": NOT_UUID,
        "saga_id": NOT_UUID,
        "step": NOT_STR,
        "outcome": ["done", "SUCCESS", 1, None, []],
    },
    "command": {
        "command_id": NOT_UUID,
        "saga_id": NOT_UUID,
        "saga": NOT_STR,
        "step": NOT_STR,
        "kind": ["undo", "", None, 1],
        "attempt": [0, -3, 1.5, "x", None, []],
        "idempotency_key": NOT_STR,
        "payload": NOT_OBJECT,
        "expires_at": ["tomorrow", "", None, [], {}],
    },
}
# The free-form field of each kind, where nested or oversized content goes.
FREE_FORM = {
    "start": "input",
    "cancel": "reason",
    "signal": "payload",
    "reply": "result",
    "command": "payload",
}


def _not_dict(value: Any) -> bool:
    return not isinstance(value, dict)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


@st.composite
def broken(
    draw: st.DrawFn, kind: str, valid: dict[str, Any], max_bytes: int
) -> tuple[str, bytes, str | None, str]:
    """(what, body, content type, reason pattern): `valid` broken one way."""
    way = draw(
        st.sampled_from(
            # Hypothesis favours the first: the subtle ones come before plain garbage.
            [
                "wrong type",
                "missing field",
                "too large",
                "extra field",
                "garbage",
                "truncated",
                "not an object",
                "invalid UTF-8",
                "too deep",
                "not JSON content type",
                "NUL character",
                "not a finite number",
            ]
        )
    )
    body = _encode(valid)
    if way == "garbage":
        # Whatever these bytes are, no valid message: no JSON object carries every field.
        garbage = draw(st.binary(max_size=300))
        return way, garbage, JSON, r"^(invalid JSON: |body: |field |the body holds)"
    if way == "truncated":
        cut = draw(st.integers(0, len(body) - 1))
        return way, body[:cut], JSON, r"^invalid JSON: "
    if way == "not an object":
        value = draw(st.lists(json_values, max_size=3) | json_values.filter(_not_dict))
        return way, json.dumps(value).encode(), JSON, r"^(body|invalid JSON)"
    if way == "invalid UTF-8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
        # Into the first string value: the quotes stay balanced, only the bytes are wrong.
        at = body.index(b'": "') + 4
        return way, body[:at] + bad + body[at:], JSON, r"^invalid JSON: "
    if way in ("wrong type", "missing field", "extra field"):
        name = draw(st.sampled_from(sorted(REQUIRED[kind])))
        message = dict(valid)
        if way == "wrong type":
            message[name] = draw(st.sampled_from(REQUIRED[kind][name]))
            pattern = rf"(field {name}|{name}:|give exactly one|String should)"
        elif way == "missing field":
            message.pop(name, None)
            if kind == "cancel":
                # `reason` has a default and the target is either field: drop the target.
                message.pop("key", None)
                message.pop("saga_id", None)
            pattern = r"(Field required|give exactly one)"
        elif kind == "reply":
            # Replies ignore unknown fields (older and newer participants): valid, so
            # break it differently.
            message["outcome"] = "maybe"
            pattern = r"field outcome"
        elif kind == "command":
            # Commands ignore unknown fields too (newer orchestrators).
            message["kind"] = "maybe"
            pattern = r"field kind"
        else:
            message[f"zz_{draw(st.integers(0, 999))}"] = draw(json_values)
            pattern = r"Extra inputs are not permitted"
        return f"{way} ({name})", _encode(message), JSON, pattern
    if way == "too deep":
        depth = draw(st.integers(260, 5000))
        nested = b'{"a":' * depth + b"1" + b"}" * depth
        message = {**valid, FREE_FORM[kind]: "@@"}
        return way, _encode(message).replace(b'"@@"', nested), JSON, r"recursion limit"
    if way == "too large":
        over = draw(st.integers(1, 4096))
        filler = "x" * (max_bytes + over)
        return way, _encode({**valid, "pad": filler}), JSON, r"exceeds the limit of \d+ bytes"
    if way == "not JSON content type":
        content_type = draw(
            st.sampled_from(
                [
                    "application/x-python-pickle",
                    "application/python-pickle",
                    "application/x-pickle",
                    "text/plain",
                    "application/octet-stream",
                    "application/xml",
                    "application/x-msgpack",
                    "application/jsonx",
                ]
            )
        )
        # A valid body: it is the content type alone that gets it refused, unread.
        return f"{way} ({content_type})", body, content_type, r"JSON only"
    if way == "NUL character":
        # Otherwise valid (a start's input keeps its ticket_id): only the NUL is wrong.
        message = _with_free_form(kind, valid, "a\u0000b")
        return way, _encode(message), JSON, r"NUL"
    assert way == "not a finite number"
    token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-2E+999"]))
    message = _with_free_form(kind, valid, "@@")
    pattern = r"not finite"
    return way, _encode(message).replace(b'"@@"', token.encode()), JSON, pattern


def _with_free_form(kind: str, valid: dict[str, Any], value: str) -> dict[str, Any]:
    """`valid` with `value` added to its free-form field (cancel: as its reason)."""
    field = FREE_FORM[kind]
    if kind == "cancel":
        return {**valid, field: value}
    return {**valid, field: {**(valid.get(field) or {}), "zz": value}}


# -- probes per queue ----------------------------------------------------------------------


@st.composite
def request_probe(draw: st.DrawFn, ctx: Context) -> Probe:
    kind = draw(st.sampled_from(["start", "cancel", "signal"]))
    valid = draw({"start": valid_start(), "cancel": valid_cancel(), "signal": valid_signal()}[kind])
    forged = draw(st.sampled_from(["broken", "unknown target", "unknown routing key"]))
    if forged == "broken":
        what, body, content_type, reason = draw(broken(kind, valid, ctx.max_bytes))
        return Probe(f"{kind}: {what}", "requests", kind, body, Dead(reason), content_type)
    if forged == "unknown routing key":
        # Straight to the queue through the default exchange: neither start nor cancel.
        return Probe(
            "request: unknown routing key",
            "requests",
            "",
            _encode(valid),
            Dead(r"unknown routing key"),
        )
    if kind == "signal":
        return signal_probe(draw, ctx, valid)
    if kind == "cancel":
        # A key or saga id that names no saga; or both, or neither.
        variant = draw(
            st.sampled_from(["unknown key or id", "both key and id", "neither key nor id"])
        )
        if variant == "both key and id":
            valid = {**valid, "key": "k", "saga_id": draw(uuids)}
        elif variant == "neither key nor id":
            valid = {"reason": "r"}
        expect: Expect = Dead(r"give exactly one")
        if variant == "unknown key or id":
            expect = HeldCancel(valid["key"]) if "key" in valid else Dead(r"no saga with id")
        return Probe(f"cancel: {variant}", "requests", "cancel", _encode(valid), expect)
    variant = draw(st.sampled_from(["unknown saga", "unknown version", "invalid input"]))
    if variant == "unknown saga":
        name = draw(
            st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=30)
        )
        valid = {**valid, "saga": f"nosuch_{name}"}
        pattern = r"no saga named"
    elif variant == "unknown version":
        valid = {**valid, "version": draw(st.integers(2, 10**6))}
        pattern = r"has no version"
    else:
        valid = {
            **valid,
            "input": draw(st.sampled_from([{}, {"ticket_id": 5}, {"ticket_id": None}])),
        }
        pattern = r"input for saga 'fuzz_ticket' is invalid"
    return Probe(f"start: {variant}", "requests", "start", _encode(valid), Dead(pattern))


def signal_probe(draw: st.DrawFn, ctx: Context, valid: dict[str, Any]) -> Probe:
    """A signal for no saga, for a finished one, or with both targets or neither."""
    variant = draw(
        st.sampled_from(
            ["unknown key or id", "finished saga", "both key and id", "neither key nor id"]
        )
    )
    if variant == "both key and id":
        valid = {**valid, "key": "k", "saga_id": draw(uuids)}
    elif variant == "neither key nor id":
        valid = {k: v for k, v in valid.items() if k not in ("key", "saga_id")}
    elif variant == "finished saga":
        valid = {**{k: v for k, v in valid.items() if k != "key"}, "saga_id": ctx.saga_id}
    expect: Expect = Dead(r"give exactly one")
    if variant in ("unknown key or id", "finished saga"):
        expect = RefusedSignal(valid["signal_id"])
    return Probe(f"signal: {variant}", "requests", "signal", _encode(valid), expect)


@st.composite
def reply_probe(draw: st.DrawFn, ctx: Context) -> Probe:
    forged = draw(st.sampled_from(["broken", "unknown saga", "stray command id"]))
    if forged == "broken":
        what, body, content_type, reason = draw(broken("reply", draw(valid_reply()), ctx.max_bytes))
        return Probe(f"reply: {what}", "replies", "", body, Dead(reason), content_type)
    if forged == "unknown saga":
        valid = draw(valid_reply())
        return Probe(
            "reply: unknown saga",
            "replies",
            "",
            _encode(valid),
            UnknownSagaReply(valid["command_id"]),
        )
    # A real saga, a step it has or one it has not, a command it never sent.
    valid = draw(valid_reply(ctx.saga_id))
    valid["step"] = draw(st.sampled_from(ctx.steps) | texts)
    recorded = valid["outcome"] != "heartbeat" or valid["step"] not in ctx.steps
    return Probe(
        "reply: never dispatched",
        "replies",
        "",
        _encode(valid),
        StrayReply(ctx.saga_id, valid["command_id"], recorded),
    )


@st.composite
def command_probe(draw: st.DrawFn, ctx: Context) -> Probe:
    valid = draw(valid_command())
    forged = draw(
        st.sampled_from(["broken", "unknown command", "expired", "forged ids", "no reply_to"])
    )
    if forged == "broken":
        what, body, content_type, reason = draw(broken("command", valid, ctx.max_bytes))
        return Probe(
            f"command: {what}", "commands", ECHO, body, Dead(reason), content_type, ctx.spy
        )
    if forged == "no reply_to":
        return Probe("command: no reply_to", "commands", ECHO, _encode(valid), Dead(r"no reply_to"))
    if forged == "unknown command":
        name = draw(st.from_regex(r"[a-z][a-z0-9_]{0,30}", fullmatch=True))
        command = f"{SERVICE}.{name}"
        if command in HANDLED:
            command = f"{SERVICE}.nosuch_{name}"
        expect = Answered(valid["command_id"], "failure", "unknown_command")
        return Probe(
            "command: unknown name", "commands", command, _encode(valid), expect, JSON, ctx.spy
        )
    if forged == "expired":
        valid["expires_at"] = _past()
        expect = Answered(valid["command_id"], "failure", "expired")
        return Probe("command: expired", "commands", ECHO, _encode(valid), expect, JSON, ctx.spy)
    # Valid in every way but made up: the participant cannot tell and runs it (idempotently).
    expect = Answered(valid["command_id"], "success")
    return Probe("command: forged ids", "commands", ECHO, _encode(valid), expect, JSON, ctx.spy)


def probes(ctx: Context) -> st.SearchStrategy[Probe]:
    return st.one_of(request_probe(ctx), reply_probe(ctx), command_probe(ctx))


@dataclass(frozen=True)
class Batch:
    """One example: probes and good starts, in the order they are published."""

    messages: list[Probe | str]  # a str is the key of a good start


@st.composite
def batches(draw: st.DrawFn, ctx: Context, size: int) -> Batch:
    bad: list[Probe | str] = list(draw(st.lists(probes(ctx), min_size=size, max_size=size)))
    good: list[Probe | str] = [f"good-{uuid.uuid4().hex}" for _ in range(draw(st.integers(1, 3)))]
    return Batch(draw(st.permutations(bad + good)))
