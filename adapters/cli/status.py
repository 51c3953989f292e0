"""`saga status` and what it prints: the saga and its output, one row per step with its
action's outcome (for a wait step, where its wait stands) and how its compensation went, the
payloads steps built, and with `--wide` every value and the history in full; the history
table `saga history` shares with it; and the saga as `--json` prints it, which `saga list`
shares.

A compensation's reply result is not kept (the step keeps its action's result), so what
there is to show is its status, its attempts, its failures (from the history: the step's
`error` is overwritten by whichever of action and compensation failed last) and whether an
operator marked it done by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient, state_from_api, waits_from_api
from adapters.cli.support import JsonOpt, TokenOpt, UrlOpt
from adapters.text_table import render_table
from orchestrator.event_names import HistoryEvent
from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState, StepState, StepStatus
from orchestrator.waiting import WaitView, waiting_for, waits

if TYPE_CHECKING:
    from orchestrator.registry import Registry

WideOpt = Annotated[
    bool, typer.Option("--wide", help="Print every value in full instead of cutting it short.")
]

NARROW = 60  # a value's width in a table cell when not --wide
DETAIL_NARROW = 70

_ACTION_FAILURES = frozenset({HistoryEvent.STEP_FAILED, HistoryEvent.STEP_RETRY_SCHEDULED})
_COMPENSATION_FAILURES = frozenset(
    {HistoryEvent.COMPENSATION_RETRY_SCHEDULED, HistoryEvent.COMPENSATION_PARKED}
)
_COMPENSATION_EVENTS = _COMPENSATION_FAILURES | {
    HistoryEvent.COMPENSATION_DISPATCHED,
    HistoryEvent.COMPENSATION_TIMED_OUT,
    HistoryEvent.STEP_COMPENSATED,
    HistoryEvent.STEP_MARKED_COMPENSATED,
    HistoryEvent.SAGA_FAILED,
}


def status(
    saga: Annotated[str, typer.Argument(help="Saga id or start key.")],
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    wide: WideOpt = False,
) -> None:
    """Show a saga, its steps and how each one's compensation went; --wide adds the history
    and cuts nothing short."""
    history: list[HistoryRecord] = []
    if url:
        with ApiClient(url, token) as api:
            detail = api.saga_detail(saga)
            state, views = state_from_api(detail), waits_from_api(detail)
            if not as_json:
                history = api.history(state.saga_id)
    else:

        async def read(store: Any) -> SagaState:
            found = await cs.find_in(store, saga)
            if not as_json:
                history.extend(await store.history(found.saga_id))
            return found

        config = cs.settings()
        state = cs.run(cs.with_store(config, read))
        views = waits_of(cs.loaded_definitions(config), state)
    if as_json:
        typer.echo(json.dumps(state_json(state, views), indent=2))
        return
    typer.echo(render(state, history, wide=wide, waits=views))


def waits_of(registry: Registry, state: SagaState) -> dict[str, WaitView]:
    """The saga's wait steps, as far as `registry` knows its definition."""
    return waits(registry.definition(state.name, state.version), state)


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


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def render(
    state: SagaState,
    history: Sequence[HistoryRecord],
    *,
    wide: bool,
    waits: Mapping[str, WaitView] | None = None,
) -> str:
    """What `saga status` prints; `waits`: the saga's wait steps, by name."""
    waits = waits or {}
    lines = [
        f"{state.name} v{state.version}  {state.saga_id}  key={state.key}  status={state.status}"
    ]
    if state.parent is not None:
        lines.append(f"child of saga {state.parent.saga_id}, step {state.parent.step}")
    if state.error:
        lines.append(f"error: {_text(state.error, wide)}")
    rows = []
    for step in state.steps:
        mine = [r for r in history if _about(r, step.name)]
        wait = waits.get(step.name)
        # A wait not over yet says where it stands, in full; once over, its result shows.
        outcome = (
            wait.describe()
            if wait is not None and wait.stage in ("pending", "held", "waiting")
            else _text(action_outcome(step, mine), wide)
        )
        rows.append(
            [
                step.name,
                step.status,
                str(step.attempt),
                outcome,
                compensation(step, mine, wide=wide),
            ]
        )
    lines.append(
        render_table(["step", "status", "attempts", "result / error", "compensation"], rows)
    )
    # A wait step's payload is the signal it holds or took, shown in its row instead.
    built = [
        [s.name, _json(s.payload, wide)] for s in state.steps if _built(s) and s.name not in waits
    ]
    if built:
        lines += [
            "",
            "payloads (sent instead of the saga's input):",
            render_table(["step", "payload"], built),
        ]
    if state.output is not None:
        lines += ["", f"output: {_json(state.output, wide)}"]
    if wide:
        lines += ["", "history:", history_table(history, wide=True)]
    return "\n".join(lines)


def action_outcome(step: StepState, mine: Sequence[HistoryRecord]) -> Any:
    """The action's result, or the error its last attempt failed with."""
    if step.result is not None:
        return step.result
    failures = [r.detail["error"] for r in mine if r.event in _ACTION_FAILURES and r.detail]
    if failures:
        return failures[-1]
    # Without a recorded failure the step's error can only be the action's while no
    # compensation ran (a false guard, a failed `items=` or `until=`).
    return step.error if step.compensation_attempt == 0 else None


def compensation(step: StepState, mine: Sequence[HistoryRecord], *, wide: bool = False) -> str:
    """How the step's compensation went: empty while none began."""
    attempts = f"{step.compensation_attempt} attempt{'s' * (step.compensation_attempt != 1)}"
    undo = [r for r in mine if r.event in _COMPENSATION_EVENTS]
    if step.status == StepStatus.COMPENSATED:
        marked = next(
            (r for r in reversed(undo) if r.event == HistoryEvent.STEP_MARKED_COMPENSATED), None
        )
        if marked is not None:
            note = (marked.detail or {}).get("note", "")
            text = f"marked compensated by {marked.actor}: {note}"
        else:
            text = f"compensated ({attempts})"
    elif step.status == StepStatus.COMPENSATING:
        latest = undo[-1].event if undo else HistoryEvent.COMPENSATION_DISPATCHED
        if latest in (HistoryEvent.COMPENSATION_PARKED, HistoryEvent.SAGA_FAILED):
            text = f"parked after {attempts}"
        elif latest == HistoryEvent.COMPENSATION_RETRY_SCHEDULED:
            text = f"attempt {step.compensation_attempt} failed, waiting to retry"
        else:
            text = f"attempt {step.compensation_attempt} in flight"
    else:
        return ""
    failures = [r for r in undo if r.event in _COMPENSATION_FAILURES or _parked(r)]
    if failures:
        text += f"; last failure: {_text(_failure(failures[-1], step), wide)}"
    return text


def history_table(records: Sequence[HistoryRecord], *, wide: bool) -> str:
    rows = [
        [
            str(r.seq),
            r.at.strftime("%H:%M:%S.%f")[:-3],
            r.event,
            r.step or "",
            r.actor,
            _detail(r.detail, wide),
        ]
        for r in records
    ]
    return render_table(["seq", "at", "event", "step", "actor", "detail"], rows)


def _built(step: StepState) -> bool:
    """The step's commands carry a payload of their own (payload=, or a child's input)."""
    return step.payload is not None and step.item is None


def _about(record: HistoryRecord, step: str) -> bool:
    """The record concerns the step: its own, or the saga's park on the step's compensation."""
    if _parked(record):
        return (record.detail or {}).get("step") == step
    return record.step == step


def _parked(record: HistoryRecord) -> bool:
    """The saga was parked because a compensation ran out (the detail names the step)."""
    detail = record.detail or {}
    return record.event == HistoryEvent.SAGA_FAILED and detail.get("type") == "compensation_failed"


def _failure(record: HistoryRecord, step: StepState) -> Any:
    """The error a compensation failed with. The saga's park names only the step; the error
    is the step's own, which nothing overwrites once its compensation began but a later
    failure, recorded after the park."""
    if _parked(record):
        return step.error
    return (record.detail or {}).get("error")


def _text(value: Any, wide: bool) -> str:
    """A value for a cell: an error by its message (whole, as JSON, when wide)."""
    if not wide and isinstance(value, dict) and value.get("message"):
        value = value["message"]
    return _json(value, wide)


def _json(value: Any, wide: bool) -> str:
    """A value as JSON (a string as it is), cut short unless wide."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if wide or len(text) <= NARROW else text[: NARROW - 1] + "…"


def _detail(detail: dict[str, Any] | None, wide: bool) -> str:
    if not detail:
        return ""
    text = json.dumps(detail, separators=(",", ":"))
    return text if wide or len(text) <= DETAIL_NARROW else text[: DETAIL_NARROW - 1] + "…"
