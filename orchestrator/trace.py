"""W3C trace context (https://www.w3.org/TR/trace-context/) carried through a saga, without an
OpenTelemetry SDK: whoever starts a saga may send `traceparent` (and `tracestate`) as message
headers; the saga keeps them, and every message it sends carries them on, so a tracing
backend can join the caller's trace, the participants' work and the outcome.

No spans are made here: every message of the saga names the starter's span as its parent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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


def log_fields(trace: Mapping[str, str] | None) -> dict[str, str]:
    """`{"trace_id": ...}` to bind into log lines, empty without a trace context."""
    found = trace_id(trace.get(TRACEPARENT)) if trace else None
    return {} if found is None else {"trace_id": found}


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return value.strip() if isinstance(value, str) and value.strip() else None
