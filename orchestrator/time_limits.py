"""The time limits of a step's commands, and when an attempt in flight is due. Pure.

Four limits, after Temporal's activity timeouts (docs/time-limits.md):

- `timeout` (start-to-close): the most one attempt may take from its start. Heartbeats never
  extend it, so a hung handler is cut off (the participant cancels it at the same moment).
  The start is the participant's start report when the command asks for one, else the
  dispatch: then queue time counts too.
- `heartbeat_timeout`: the longest silence between heartbeats of a started attempt, so a
  participant that died is noticed in seconds however long the attempt may run.
- `schedule_to_start`: how long the command may wait in its queue before it is taken.
- `schedule_to_close`: the step's whole budget from its first dispatch, across every attempt
  and retry wait; no retry is scheduled past it.

An action and its compensation each have their own set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from orchestrator.state import StepState
from orchestrator.steps import StepDefinition

Kind = Literal["action", "compensation"]
# Which limit ended an attempt: the `timeout` field of its timeout error.
Expired = Literal["schedule_to_start", "start_to_close", "heartbeat", "schedule_to_close"]


@dataclass(frozen=True)
class Limits:
    """The limits of one kind of command of a step (its action's, or its compensation's)."""

    timeout: float
    heartbeat: float | None = None
    schedule_to_start: float | None = None
    schedule_to_close: float | None = None

    @classmethod
    def of(cls, spec: StepDefinition, kind: Kind) -> Limits:
        if kind == "action":
            return cls(
                spec.timeout,
                spec.heartbeat_timeout,
                spec.schedule_to_start,
                spec.schedule_to_close,
            )
        return cls(
            spec.compensation_timeout,
            spec.compensation_heartbeat_timeout,
            None,
            spec.compensation_schedule_to_close,
        )

    @property
    def report_start(self) -> bool:
        """The command asks for a heartbeat as soon as it is taken: the start window ends
        there, and the heartbeat timeout counts from there."""
        return self.schedule_to_start is not None or self.heartbeat is not None

    def seconds(self, expired: Expired) -> float:
        return {
            "schedule_to_start": self.schedule_to_start,
            "start_to_close": self.timeout,
            "heartbeat": self.heartbeat,
            "schedule_to_close": self.schedule_to_close,
        }[expired] or 0.0


@dataclass(frozen=True)
class Window:
    """What a dispatch sets: when the command expires unstarted (the attempt is due then
    too, until its participant is heard from), and the seconds the participant may run it."""

    expires_at: datetime
    timeout: float


def close_at(limits: Limits, now: datetime) -> datetime | None:
    """The end of a step's budget that begins now (its first attempt's dispatch)."""
    if limits.schedule_to_close is None:
        return None
    return now + timedelta(seconds=limits.schedule_to_close)


def dispatch_window(limits: Limits, now: datetime, close: datetime | None) -> Window:
    """Until the participant is heard from, the attempt is due at the end of its start
    window: the schedule-to-start timeout if the step has one, else the whole timeout. A
    command taken after it is refused by the participant (`expires_at`), not run on stale
    data. Nothing outlasts the step's budget."""
    start = limits.schedule_to_start if limits.schedule_to_start is not None else limits.timeout
    expires = _capped(now + timedelta(seconds=start), close)
    timeout = limits.timeout
    if close is not None:
        timeout = min(timeout, max((close - now).total_seconds(), 0.001))
    return Window(expires_at=expires, timeout=timeout)


def heard_due(limits: Limits, step: StepState, now: datetime) -> datetime:
    """When the attempt is due once its participant has been heard from (`step.started_at`
    set): the start-to-close end, the next heartbeat's latest moment, the budget's end."""
    due = _start_to_close_end(limits, step)
    if limits.heartbeat is not None:
        due = min(due, now + timedelta(seconds=limits.heartbeat))
    return _capped(due, step.close_at)


def expired(limits: Limits, step: StepState, now: datetime) -> Expired:
    """Which limit ended the attempt in flight whose due time has come."""
    if step.close_at is not None and step.close_at <= now:
        return "schedule_to_close"
    if step.started_at is None:
        return "schedule_to_start" if limits.schedule_to_start is not None else "start_to_close"
    if _start_to_close_end(limits, step) <= now or limits.heartbeat is None:
        return "start_to_close"
    return "heartbeat"


def retry_fits(step: StepState, due: datetime) -> bool:
    """Whether a retry due then starts inside the step's budget."""
    return step.close_at is None or due < step.close_at


def _start_to_close_end(limits: Limits, step: StepState) -> datetime:
    """When a started attempt's start-to-close timeout ends: from its start report when the
    command asks for one, else from its dispatch (queue time counts)."""
    assert step.started_at is not None
    anchor = step.started_at if limits.report_start else step.dispatched_at or step.started_at
    return anchor + timedelta(seconds=limits.timeout)


def _capped(moment: datetime, close: datetime | None) -> datetime:
    return moment if close is None else min(moment, close)
