"""Named fault points for crash tests: `SAGA_FAULT=after_commit_before_publish` (or
`...@3` for the third time the point is reached) kills the process there with SIGKILL,
exactly like `kill -9`. Without SAGA_FAULT the hook does nothing.

`saga run` reaches the first three points; a participant process (`serve`: the example shop,
`saga worker`) reaches `after_handler_before_reply`, once its handler returned (a guarded
handler's transaction has committed) and before the reply is published."""

from __future__ import annotations

import os
import signal

import structlog

from orchestrator.ports import FaultHook

log = structlog.get_logger(__name__)

POINTS = frozenset(
    {
        "after_commit_before_publish",
        "after_publish_before_outbox_delete",
        "after_commit_before_ack",
        "after_handler_before_reply",
    }
)


def fault_hook(spec: str | None) -> FaultHook:
    if not spec:
        return _inert
    point, _, nth = spec.partition("@")
    if point not in POINTS:
        raise ValueError(f"unknown fault point {point!r}; known: {', '.join(sorted(POINTS))}")
    remaining = int(nth) if nth else 1
    if remaining < 1:
        raise ValueError(f"fault count must be >= 1 in {spec!r}")

    def hit(name: str) -> None:
        nonlocal remaining
        if name != point:
            return
        remaining -= 1
        if remaining == 0:
            log.warning("fault_point_crash", point=name)
            os.kill(os.getpid(), signal.SIGKILL)

    return hit


def _inert(_point: str) -> None:
    return None
