"""`ErrorInfo` as a dict: each shape the engine builds is written as before (its keys, in
their order, unset ones left out, and the keys some types always carry null included),
and reads back as the same value."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from orchestrator.error_info import ErrorInfo
from orchestrator.locks import LockConflict, LockWaiter
from orchestrator.transition.retries import timeout_error

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
HOLDER = UUID("00000000-0000-0000-0000-000000000001")
STEP_FAILED = ErrorInfo(type="step_failed", step="charge", message="card declined")
WAITER = LockWaiter(
    saga="edit",
    version=1,
    key="k",
    input={},
    resources=("order:1", "order:2"),
    enqueued_at=NOW,
)

SHAPES: list[tuple[ErrorInfo, dict[str, Any]]] = [
    (
        ErrorInfo(type="card_declined", message="no", retryable=False),
        {"type": "card_declined", "message": "no", "retryable": False},
    ),
    (ErrorInfo(type="cancelled", message="asked"), {"type": "cancelled", "message": "asked"}),
    (
        STEP_FAILED,
        {"type": "step_failed", "step": "charge", "message": "card declined"},
    ),
    (
        timeout_error(30),
        {
            "type": "timeout",
            "timeout": "start_to_close",
            "message": "no reply within 30s (start-to-close)",
            "retryable": True,
        },
    ),
    (
        replace(timeout_error(5, "heartbeat"), message="no heartbeat; nobody", unconsumed=True),
        {
            "type": "timeout",
            "timeout": "heartbeat",
            "message": "no heartbeat; nobody",
            "retryable": True,
            "unconsumed": True,
        },
    ),
    (
        replace(timeout_error(60, "schedule_to_close"), message="no room", cause=STEP_FAILED),
        {
            "type": "timeout",
            "timeout": "schedule_to_close",
            "message": "no room",
            "retryable": True,
            "cause": {"type": "step_failed", "step": "charge", "message": "card declined"},
        },
    ),
    (
        ErrorInfo(type="compensation_failed", step="ship", message="ran out", cause=STEP_FAILED),
        {
            "type": "compensation_failed",
            "step": "ship",
            "message": "ran out",
            "cause": {"type": "step_failed", "step": "charge", "message": "card declined"},
        },
    ),
    # Compensating for a cancel: no error to say, and the key is there all the same.
    (
        ErrorInfo(type="compensation_failed", step="ship", message="ran out"),
        {"type": "compensation_failed", "step": "ship", "message": "ran out", "cause": None},
    ),
    (
        ErrorInfo(type="compensation_deadline_exceeded", message="late"),
        {"type": "compensation_deadline_exceeded", "message": "late", "cause": None},
    ),
    (
        LockConflict("order:1", held_by=HOLDER, held_by_key="k0").error(),
        {
            "type": "locked",
            "resource": "order:1",
            "held_by": str(HOLDER),
            "message": f"order:1 is held by saga {HOLDER} (key k0)",
        },
    ),
    (
        LockConflict("order:1", held_by=None).error(),
        {
            "type": "locked",
            "resource": "order:1",
            "held_by": None,
            "message": "order:1 has starts queued for it",
        },
    ),
    (
        WAITER.expired_error(NOW + timedelta(seconds=2.5)),
        {
            "type": "lock_wait_expired",
            "resources": ["order:1", "order:2"],
            "enqueued_at": NOW.isoformat(),
            "message": "waited 2.5s for order:1, order:2; still held",
        },
    ),
]


@pytest.mark.parametrize(("error", "written"), SHAPES, ids=lambda c: getattr(c, "type", ""))
def test_each_shape_is_written_as_a_dict_and_reads_back(
    error: ErrorInfo, written: dict[str, Any]
) -> None:
    assert error.to_dict() == written
    assert list(error.to_dict()) == list(written)  # the keys in the order they always had
    assert ErrorInfo.from_dict(written) == error


def test_keys_another_release_wrote_are_kept() -> None:
    written = {"type": "timeout", "message": "late", "retryable": True, "hint": {"a": 1}}
    error = ErrorInfo.from_dict(written)
    assert error.extra == {"hint": {"a": 1}}
    assert error.to_dict() == written


def test_the_summary_is_the_message_or_else_the_type() -> None:
    assert STEP_FAILED.summary == "card declined"
    assert ErrorInfo(type="error", message="").summary == "error"
    assert ErrorInfo(type="", message="").summary == "error"
