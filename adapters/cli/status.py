"""`saga status` and what it prints: the saga and its output, one row per step with its
action's outcome (for a wait step, where its wait stands) and how its compensation went, the
payloads steps built, and with `--wide` every value and the history in full; the history
table `saga history` shares with it. `--json` prints the saga as adapters/saga_json.py makes
it (with `--wide`, its history too: the shape of a `saga prune --archive` line).

A compensation's reply result is not kept (the step keeps its action's result), so what
there is to show is its status, its attempts, its failures (from the history: the step's
`error` is overwritten by whichever of action and compensation failed last) and whether an
operator marked it done by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient, state_from_api, waits_from_api
from adapters.cli.support import JsonOpt, RevealOpt, TokenOpt, UrlOpt
from adapters.saga_json import saga_json, waits_of
from adapters.text_table import render_table
from orchestrator.event_names import HistoryEvent
from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState, StepState, StepStatus
from orchestrator.waiting import WaitView

WideOpt = Annotated[
    bool,
    typer.Option(
        "--wide",
        help="Print every value in full instead of cutting it short; with --json, the history too.",
    ),
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
    *,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    wide: WideOpt = False,
    reveal: RevealOpt = False,
) -> None:
    """Show a saga, its steps and how each one's compensation went; --wide adds the history
    and cuts nothing short. Values SAGA_REDACT_FIELDS names are masked, as the API masks
    them, unless --reveal."""
    with_history = wide or not as_json
    history: list[HistoryRecord] = []
    if url:
        cs.refuse_reveal_over_api(reveal)
        with ApiClient(url, token) as api:
            detail = api.saga_detail(saga)
            state, views = state_from_api(detail), waits_from_api(detail)
            if with_history:
                history = api.history(state.saga_id)
    else:

        async def read(store: Any) -> SagaState:
            found = await cs.find_in(store, saga)
            if with_history:
                history.extend(await store.history(found.saga_id))
            return found

        config = cs.settings()
        state = cs.run(cs.with_store(config, read))
        views = waits_of(cs.loaded_definitions(config), state)
        shown = cs.masking(config, reveal, "status", [state.saga_id])
        state, history = shown.state(state), shown.history(history)
    if as_json:
        record = saga_json(state, views, history if wide else None)
        typer.echo(json.dumps(record, indent=2))
        return
    typer.echo(render(state, history, wide=wide, waits=views))


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
