"""What the history of a finished run must show however many orchestrators raced over it and
however often they died: each transition recorded once, nothing after the end. A pure check
over `saga_history` rows, so a test can also hand it a doctored history and see it complain
(tests/unit/test_history_check_catches.py). For sagas that end once: an operator's retry of
a parked saga, or a parent undoing a completed child, ends a saga twice by design."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from orchestrator.machine import command_id

DISPATCHES = {"step_dispatched": "action", "compensation_dispatched": "compensation"}
# What happens to one attempt, at most once each. The timers' part: a timeout and the retry it
# schedules (the retry's dispatch is a timer too, and DISPATCHES are unique per attempt).
ONCE_PER_ATTEMPT = {
    "step_started": "action",
    "step_succeeded": "action",
    "step_failed": "action",
    "step_timed_out": "action",
    "step_retry_scheduled": "action",
    "step_compensated": "compensation",
    "compensation_timed_out": "compensation",
    "compensation_retry_scheduled": "compensation",
}
TERMINAL = {"saga_completed", "saga_compensated", "saga_cancelled", "saga_failed"}
# What may follow the terminal entry: the finishing transaction's bookkeeping, and what came
# too late and was refused or ignored. Never a transition: no dispatch, no answer taken.
AFTER_END = {
    "locks_released",
    "parent_answered",
    "reply_ignored",
    "cancel_refused",
    "signal_refused",
    "start_repeated",
    "operator_action_refused",
}


@dataclass(frozen=True)
class Entry:
    saga_id: UUID
    seq: int
    event: str
    step: str | None
    detail: Mapping[str, Any] | None

    @property
    def attempt(self) -> int | None:
        value = (self.detail or {}).get("attempt")
        return value if isinstance(value, int) else None


def check_history(entries: Iterable[Entry], status: Mapping[UUID, str]) -> list[str]:
    """Problems in the history of the sagas in `status` (saga id -> final status)."""
    by_saga: dict[UUID, list[Entry]] = {saga_id: [] for saga_id in status}
    for entry in entries:
        by_saga.setdefault(entry.saga_id, []).append(entry)
    problems: list[str] = []
    sent: Counter[str] = Counter()
    for saga_id, history in by_saga.items():
        if saga_id not in status:
            problems.append(f"{saga_id}: history of a saga that does not exist")
            continue
        history.sort(key=lambda e: e.seq)
        problems += [f"{saga_id}: {p}" for p in _check_saga(saga_id, history, status[saga_id])]
        sent.update(
            str((e.detail or {}).get("command_id")) for e in history if e.event in DISPATCHES
        )
    problems += [f"command {cid} dispatched {n} times" for cid, n in sent.items() if n > 1]
    return problems


def _check_saga(saga_id: UUID, history: list[Entry], status: str) -> list[str]:
    problems: list[str] = []
    seqs = [e.seq for e in history]
    if seqs != list(range(1, len(history) + 1)):
        problems.append(f"history seq is not 1..{len(history)}: {seqs}")
    events = Counter(e.event for e in history)
    if events["saga_started"] != 1:
        problems.append(f"saga_started recorded {events['saga_started']} times")
    ends = [e.event for e in history if e.event in TERMINAL]
    if ends != [f"saga_{status}"]:
        problems.append(f"status {status} but terminal entries {ends}")
    end = next((n for n, e in enumerate(history) if e.event in TERMINAL), len(history))
    problems += [
        f"{e.event} {e.step} at seq {e.seq} after the saga ended"
        for e in history[end + 1 :]
        if e.event not in AFTER_END | TERMINAL
    ]

    dispatched: set[tuple[str, str | None, int | None]] = set()
    once: Counter[tuple[str, str | None, int | None]] = Counter()
    for e in history:
        if e.event in DISPATCHES:
            kind = DISPATCHES[e.event]
            if (kind, e.step, e.attempt) in dispatched:
                problems.append(f"{e.event} {e.step} attempt {e.attempt} again at seq {e.seq}")
            dispatched.add((kind, e.step, e.attempt))
            expected = e.step and e.attempt and command_id(saga_id, e.step, kind, e.attempt)
            if str((e.detail or {}).get("command_id")) != str(expected):
                problems.append(f"{e.event} {e.step} attempt {e.attempt}: wrong command id")
        elif e.event in ONCE_PER_ATTEMPT:
            once[(e.event, e.step, e.attempt)] += 1
            if (ONCE_PER_ATTEMPT[e.event], e.step, e.attempt) not in dispatched:
                problems.append(f"{e.event} {e.step} attempt {e.attempt} was never dispatched")
    problems += [
        f"{event} {step} attempt {attempt} recorded {n} times"
        for (event, step, attempt), n in once.items()
        if n > 1
    ]
    return problems
