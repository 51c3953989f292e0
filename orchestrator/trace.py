"""W3C trace context (https://www.w3.org/TR/trace-context/) carried through a saga, without an
OpenTelemetry SDK: whoever starts a saga may send `traceparent` (and `tracestate`) as message
headers; the saga keeps them, and every message it sends carries them on, so a tracing
backend can join the caller's trace, the participants' work and the outcome.

No spans are made here. Without spans (the default) every message of the saga names the
starter's span as its parent. With spans (adapters/tracing), the ids of a saga's spans are
derived, never stored: the trace id is the starter's, or the saga id's hex when it sent none;
the saga's span id comes from its saga id, an attempt's from its command id. So any replica,
days later, names the same spans, and each message names one of them (`span_headers`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any
from uuid import UUID

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
HEADERS = (TRACEPARENT, TRACESTATE)

# version 00: 2 hex version, 32 hex trace id, 16 hex parent id, 2 hex flags. Later versions
# may append fields after another dash; the first four keep this shape.
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_MAX_TRACESTATE = 512  # the spec lets a carrier drop a longer one


def from_headers(headers: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The trace context in message headers, or None when there is none or it is malformed
    (the spec says to ignore an invalid `traceparent`, and `tracestate` without it)."""
    if not headers:
        return None
    parent = _text(headers.get(TRACEPARENT))
    if parent is None or trace_id(parent) is None:
        return None
    trace = {TRACEPARENT: parent.lower()}
    state = _text(headers.get(TRACESTATE))
    if state and len(state) <= _MAX_TRACESTATE:
        trace[TRACESTATE] = state
    return trace


def trace_id(traceparent: str | None) -> str | None:
    """The 32-hex trace id of a `traceparent`, None if it is not a valid one."""
    if traceparent is None:
        return None
    match = _TRACEPARENT.match(traceparent.strip().lower())
    if match is None:
        return None
    version, trace, parent, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace) == {"0"} or set(parent) == {"0"}:
        return None
    return trace


def saga_trace_id(trace: Mapping[str, str] | None, saga_id: UUID) -> str:
    """The 32-hex trace id of a saga's spans: its starter's, else its own id's hex (a uuid4,
    random and never all zeros: an operator finds the trace by the saga id)."""
    found = trace_id(trace.get(TRACEPARENT)) if trace else None
    return found if found is not None else saga_id.hex


def saga_span_id(saga_id: UUID) -> str:
    """The 16-hex id of the span covering the whole saga."""
    return _span_id(b"saga", saga_id)


def attempt_span_id(command_id: UUID) -> str:
    """The 16-hex id of the span of one attempt (an action's or a compensation's): its
    command's id is derived from the saga, step, kind and attempt, so this one is too."""
    return _span_id(b"attempt", command_id)


def sampled(trace: Mapping[str, str] | None) -> bool:
    """The starter's sampling decision (its `traceparent` flags); True when it sent none."""
    parent = trace.get(TRACEPARENT) if trace else None
    if parent is None or trace_id(parent) is None:
        return True
    match = _TRACEPARENT.match(parent.strip().lower())
    assert match is not None  # trace_id() matched it
    return bool(int(match.group(4), 16) & 1)


def span_headers(trace: Mapping[str, str] | None, saga_id: UUID, span_id: str) -> dict[str, str]:
    """Headers naming the saga's span `span_id` as the parent of the work a message causes:
    the saga's trace id, the starter's sampling flag and `tracestate`."""
    flags = "01" if sampled(trace) else "00"
    headers = {TRACEPARENT: f"00-{saga_trace_id(trace, saga_id)}-{span_id}-{flags}"}
    if trace and TRACESTATE in trace and trace_id(trace.get(TRACEPARENT)) is not None:
        headers[TRACESTATE] = trace[TRACESTATE]
    return headers


def _span_id(kind: bytes, of: UUID) -> str:
    digest = hashlib.sha256(kind + b":" + of.bytes).digest()
    # All zeros is no span id (W3C); 2^-64 odds, but a zero would break the trace.
    return (digest[:8] if any(digest[:8]) else digest[8:16]).hex()


def log_fields(trace: Mapping[str, str] | None) -> dict[str, str]:
    """`{"trace_id": ...}` to bind into log lines, empty without a trace context."""
    found = trace_id(trace.get(TRACEPARENT)) if trace else None
    return {} if found is None else {"trace_id": found}


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return value.strip() if isinstance(value, str) and value.strip() else None
