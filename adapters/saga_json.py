"""A saga as JSON, in the one shape every reader gets: what `saga status --json` prints (and
`saga list --json`, one per saga), its history as `saga history --json` prints it, and both
together as `saga status --json --wide` prints them — which is also what each line of a
`saga prune --archive` holds (adapters/archive.py), so an archived saga reads exactly as
status showed it.

Values are printed as they are given: masking (adapters/redaction.py) is the caller's, done
before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState, StepState
from orchestrator.waiting import WaitView, waiting_for, waits

if TYPE_CHECKING:
    from orchestrator.registry import Registry


def waits_of(registry: Registry, state: SagaState) -> dict[str, WaitView]:
    """The saga's wait steps, as far as `registry` knows its definition."""
    return waits(registry.definition(state.name, state.version), state)


def saga_json(
    state: SagaState,
    views: Mapping[str, WaitView] | None = None,
    history: Sequence[HistoryRecord] | None = None,
) -> dict[str, Any]:
    """The saga as `--json` prints it; `views`: its wait steps, by name; with `history`
    (`--wide`), its history too, under "history"."""
    shown = state_json(state, views)
    if history is not None:
        shown["history"] = history_json(history)
    return shown


def state_json(state: SagaState, views: Mapping[str, WaitView] | None = None) -> dict[str, Any]:
    """The saga as `--json` prints it; `views`: its wait steps, by name."""
    views = views or {}
    return {
        "saga_id": str(state.saga_id),
        "saga": state.name,
        "version": state.version,
        "key": state.key,
        "status": state.status.value,
        "input": state.input,
        "output": state.output,
        "error": state.error,
        "cancel_reason": state.cancel_reason,
        "parent": None if state.parent is None else state.parent.model_dump(mode="json"),
        "created_at": state.created_at.isoformat(),
        "updated_at": state.updated_at.isoformat(),
        "waiting_for": waiting_for(dict(views)),
        "steps": [_step_json(s, views.get(s.name)) for s in state.steps],
    }


def history_json(records: Sequence[HistoryRecord]) -> list[dict[str, Any]]:
    """The history as `saga history --json` prints it, oldest first."""
    return [
        {
            "seq": r.seq,
            "at": r.at.isoformat(),
            "event": r.event,
            "step": r.step,
            "actor": r.actor,
            "detail": r.detail,
        }
        for r in records
    ]


def wait_json(view: WaitView) -> dict[str, Any]:
    """A wait step's wait as `--json` prints it (the signal it holds or took, as `wait`)."""
    return {
        "signal": view.signal,
        "stage": view.stage,
        "timeout": view.timeout,
        "on_timeout": view.on_timeout,
        "waiting_since": _iso(view.since),
        "until": _iso(view.until),
        "signal_id": view.signal_id,
        "received_at": _iso(view.received_at),
    }


def _step_json(step: StepState, wait: WaitView | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": step.name,
        "status": step.status.value,
        "attempt": step.attempt,
        "compensation_attempt": step.compensation_attempt,
        "result": step.result,
        "error": step.error,
    }
    if step.item is not None:
        out["item"] = step.payload
    elif wait is not None:
        out["wait"] = wait_json(wait)
    elif step.payload is not None:
        out["payload"] = step.payload
    return out


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()
