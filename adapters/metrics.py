"""Prometheus metrics of this process, in a registry of their own.

Not the library's global default registry: tests read exact values from `REGISTRY` without
the process, platform and GC collectors (or another library's metrics) in the way, and an
HTTP `/metrics` endpoint renders exactly this with `render()`.

The engine knows nothing of Prometheus: it reports what happened through its `observe`
callback (orchestrator.engine.Observer) and `observe` below turns that into counts. The
consumers report dead-lettered messages through `dead_lettered`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

REPLIES_IGNORED = Counter(
    "saga_replies_ignored",
    "Replies acknowledged without being applied, by reason: duplicate, stale attempt, late, "
    "unknown step (each also in the saga's history), unknown saga (no history possible).",
    ["reason"],
    registry=REGISTRY,
)
MESSAGES_DEAD_LETTERED = Counter(
    "saga_messages_dead_lettered",
    "Messages this process moved to the dead queue as unprocessable, by the queue they came "
    "from. Messages the broker dead-letters past the delivery limit are not counted here: "
    "watch the dead queue's depth for those.",
    ["queue"],
    registry=REGISTRY,
)
TRANSITIONS = Counter(
    "saga_transitions",
    "Saga history events committed, by event (step_dispatched, saga_completed, "
    "reply_ignored, cancel_ignored, ...); reply_ignored for an unknown saga counts too.",
    ["event"],
    registry=REGISTRY,
)
STARTS_DEDUPLICATED = Counter(
    "saga_starts_deduplicated",
    "Start requests whose (saga, key) had started a saga already: acknowledged, nothing started.",
    ["saga"],
    registry=REGISTRY,
)

LOCKED_STARTS = Counter(
    "saga_starts_locked",
    "Starts a held semantic lock kept from starting at once, by saga and outcome: rejected, "
    "queued, or lock_wait_expired (a queued start whose wait ran out).",
    ["saga", "outcome"],
    registry=REGISTRY,
)

_NO_HISTORY = "saga_start_duplicate"
# Starts that found a resource held: no saga (yet), so no history either.
_LOCKED = {
    "saga_start_rejected": "rejected",
    "saga_start_queued": "queued",
    "lock_wait_expired": "lock_wait_expired",
}


def observe(event: str, detail: Mapping[str, Any]) -> None:
    """The engine's observer (orchestrator.engine.Observer)."""
    if event == _NO_HISTORY:
        STARTS_DEDUPLICATED.labels(saga=str(detail.get("saga", ""))).inc()
        return
    if event in _LOCKED:
        LOCKED_STARTS.labels(saga=str(detail.get("saga", "")), outcome=_LOCKED[event]).inc()
        return
    TRANSITIONS.labels(event=event).inc()
    if event == "reply_ignored":
        REPLIES_IGNORED.labels(reason=str(detail.get("reason", ""))).inc()


def dead_lettered(queue: str) -> None:
    MESSAGES_DEAD_LETTERED.labels(queue=queue).inc()


def value(name: str, **labels: str) -> float:
    """A sample's current value, 0 when it was never incremented (for tests and the CLI)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def render() -> bytes:
    """The text exposition format, for a `/metrics` endpoint."""
    return generate_latest(REGISTRY)
