"""A saga module for `saga run` in tests/e2e/test_many_signals.py
(SAGA_MODULES=tests.e2e.review_saga).

`review`: the desk prepares a ticket -> the saga waits for the signal `verdict` -> the desk
records the verdict it was sent (the record's payload is built from the wait's result). No
step has anything to undo and the wait outlasts the test, so every saga ends completed, its
verdict the payload of the one signal it took.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator import Saga
from orchestrator.definition import GuardContext

VERDICT_TIMEOUT = 300.0


class Ticket(BaseModel):
    ticket_id: str


class Verdict(BaseModel):
    """The payload of the signal `verdict`: which sender sent it, and for which ticket."""

    model_config = ConfigDict(extra="forbid")

    ticket_id: str
    sender: str


def recorded(ctx: GuardContext) -> dict[str, Any]:
    """What `desk.record` is sent: the verdict the wait took."""
    return ctx.result("verdict", Verdict).model_dump()


review = Saga("review", version=1, input=Ticket, timeout=30)
review.remote("prepare", command="desk.prepare", compensation=None)
review.wait("verdict", timeout=VERDICT_TIMEOUT, result=Verdict)
review.remote("record", command="desk.record", compensation=None, payload=recorded)
