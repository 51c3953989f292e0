"""Scripted answers: what a participant does with one delivery of a command.

An `Answer` is a reply (success or failure) sent some virtual seconds after the command was
dispatched, optionally preceded by heartbeats; or silence, so the step's timeouts fire.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from orchestrator.messages import ReplyError


@dataclass(frozen=True)
class Answer:
    """One delivery's answer. Build it with `succeed`, `fail`, `no_answer`, `answer_after`
    or `heartbeat` rather than by hand."""

    outcome: Literal["success", "failure", "none"]
    result: Any = None
    error: ReplyError | None = None
    # Virtual seconds between the command's dispatch and the reply.
    after: float = 0.0
    # (virtual seconds after the dispatch, details) of each heartbeat sent before the reply.
    heartbeats: tuple[tuple[float, Any], ...] = ()

    def __repr__(self) -> str:
        parts: list[str] = [self.outcome]
        if self.result is not None:
            parts.append(f"result={self.result!r}")
        if self.error is not None:
            parts.append(f"error={self.error.type!r} retryable={self.error.retryable}")
        if self.after:
            parts.append(f"after={self.after:g}s")
        if self.heartbeats:
            parts.append(f"heartbeats at {[at for at, _ in self.heartbeats]}")
        return f"Answer({', '.join(parts)})"


def succeed(result: Any = None) -> Answer:
    """Reply success at once, with `result` (a JSON value, or a pydantic model)."""
    if hasattr(result, "model_dump"):
        result = result.model_dump(mode="json")
    return Answer("success", result=result)


def fail(type: str = "error", message: str = "", *, retryable: bool = True) -> Answer:
    """Reply failure at once. `retryable=False` is a business answer (a declined card): the
    step's retries are not spent."""
    error = ReplyError(type=type, message=message or type, retryable=retryable)
    return Answer("failure", error=error)


def no_answer() -> Answer:
    """Never reply: the step's timeouts fire (they cost no wall time)."""
    return Answer("none")


def answer_after(seconds: float, answer: Answer) -> Answer:
    """`answer`, sent `seconds` virtual seconds after the command was dispatched."""
    if seconds < 0:
        raise ValueError(f"answer_after: seconds must be >= 0, not {seconds}")
    return replace(answer, after=seconds)


def heartbeat(*at: float, details: Any = None, then: Answer | None = None) -> Answer:
    """Heartbeats `at` these virtual seconds after the dispatch (with `details`, the
    checkpoint a retry gets back as `progress`), then `then` (by default: no reply)."""
    if not at or any(a < 0 for a in at):
        raise ValueError(f"heartbeat: give one or more times >= 0, not {at}")
    final = then if then is not None else no_answer()
    beats = tuple((float(a), details) for a in sorted(at))
    return replace(final, heartbeats=tuple(sorted(final.heartbeats + beats, key=lambda b: b[0])))
