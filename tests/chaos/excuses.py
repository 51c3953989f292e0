"""Which unplanned outcomes a recorded fault explains.

An order planned to complete may end compensated under faults and still be right: its reply
was lost by the relay and the step timed out, or a database restart made the participant
answer "failed" until the step ran out of attempts. That is excused only with evidence: the
saga's own history holds the event that turned it away from its plan (a step that timed out or
failed, the saga's deadline), and a fault of the run covers that attempt's time (between its
dispatch and that event), or the relay lost that very step's reply. Anything else fails the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tests.chaos.injector import Record

# The events after which a saga can leave its plan, each with the step it is about.
TURNING = frozenset({"step_timed_out", "step_failed", "saga_deadline_exceeded"})
# After a fault is over, the deployment takes a while to reconnect and catch up: an attempt
# that began within this many seconds of a fault's end is still its victim.
AFTERMATH = 10.0


@dataclass(frozen=True)
class Timed:
    """One history entry of a saga, with the wall-clock time it was recorded."""

    at: float
    event: str
    step: str | None
    attempt: int | None


@dataclass(frozen=True)
class LostReply:
    """A reply the relay acknowledged and threw away on purpose."""

    saga_id: str
    step: str
    at: float


def explain(
    unexpected: Mapping[str, str],
    histories: Mapping[str, tuple[str, Sequence[Timed]]],
    faults: Iterable[Record],
    lost: Iterable[LostReply],
) -> dict[str, str]:
    """key -> why its outcome differs from the plan, for the keys of `unexpected` that a fault
    explains. `histories`: key -> (saga id, its entries in order)."""
    faults = list(faults)
    lost_by_step: dict[tuple[str, str], list[float]] = {}
    for reply in lost:
        lost_by_step.setdefault((reply.saga_id, reply.step), []).append(reply.at)
    excused: dict[str, str] = {}
    for key in unexpected:
        saga_id, entries = histories.get(key, ("", ()))
        for turn in (e for e in entries if e.event in TURNING):
            began = _attempt_began(entries, turn)
            why = _lost_reply(lost_by_step.get((saga_id, turn.step or ""), []), began, turn)
            why = why or _fault(faults, began, turn)
            if why:
                excused[key] = f"{turn.event} {turn.step or ''}: {why}".replace("  ", " ")
                break
    return excused


def _attempt_began(entries: Sequence[Timed], turn: Timed) -> float:
    """When the attempt `turn` ends began: its dispatch, or the saga's start."""
    began = entries[0].at if entries else turn.at
    for entry in entries:
        if entry.at > turn.at:
            break
        same_step = entry.step == turn.step or turn.step is None
        if entry.event == "step_dispatched" and same_step:
            began = entry.at
    return began


def _lost_reply(times: Sequence[float], began: float, turn: Timed) -> str | None:
    if any(began <= at <= turn.at for at in times):
        return "its reply was lost by the relay"
    return None


def _fault(faults: Sequence[Record], began: float, turn: Timed) -> str | None:
    for fault in faults:
        if fault.began <= turn.at and fault.ended + AFTERMATH >= began:
            return f"during {fault.kind} ({fault.detail})" if fault.detail else fault.kind
    return None
