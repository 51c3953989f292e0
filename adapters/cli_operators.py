"""The operator's ladder for sagas that cannot finish on their own: `retry`, `skip`,
`mark-compensated`, `pause`, `resume`, and `history` to see what happened and who did what.

Each action goes through the engine like any other transition (row lock, history, outbox) and
is recorded with who did it and why. A refused action (the saga is not in a state it applies
to) exits 1 with the reason.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from adapters import cli_support as cs
from adapters.cli_support import JsonOpt
from adapters.text_table import render_table
from orchestrator.machine import (
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
)
from orchestrator.state import SagaState

SagaArg = Annotated[str, typer.Argument(help="Saga id or start key.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why; recorded in history.")]
WhoOpt = Annotated[
    str | None, typer.Option(help="Who acts; recorded in history. Default: your user name.")
]


def register(app: typer.Typer) -> None:
    app.command()(retry)
    app.command()(skip)
    app.command("mark-compensated")(mark_compensated)
    app.command()(pause)
    app.command()(resume)
    app.command()(history)


def retry(saga: SagaArg, reason: ReasonOpt, who: WhoOpt = None) -> None:
    """Continue a parked (failed) saga from where it stopped, with a fresh retry budget."""
    _act(saga, who, lambda: RetryRequested(reason))


def skip(
    saga: SagaArg,
    step: Annotated[str, typer.Argument(help="The step to treat as done.")],
    reason: ReasonOpt,
    result: Annotated[
        str, typer.Option(help="The step's result as JSON (later steps may use it).")
    ] = "null",
    who: WhoOpt = None,
) -> None:
    """Treat a step as done with a supplied result: a step parked past the pivot (the saga
    then continues), or a pending step of a paused saga."""
    value = cs.parse_json("--result", result)
    _act(saga, who, lambda: SkipRequested(step=step, result=value, reason=reason))


def mark_compensated(saga: SagaArg, reason: ReasonOpt, who: WhoOpt = None) -> None:
    """Record that the parked compensation was done by hand (--reason is the note); the saga
    then undoes the remaining steps."""
    _act(saga, who, lambda: MarkCompensated(reason))


def pause(saga: SagaArg, reason: ReasonOpt, who: WhoOpt = None) -> None:
    """Dispatch nothing new and hold the saga's timers until `resume` (replies of commands
    already sent are still recorded)."""
    _act(saga, who, lambda: PauseRequested(reason))


def resume(saga: SagaArg, reason: ReasonOpt, who: WhoOpt = None) -> None:
    """Resume a paused saga: timers that came due meanwhile fire, dispatch continues."""
    _act(saga, who, lambda: ResumeRequested(reason))


def history(saga: SagaArg, as_json: JsonOpt = False) -> None:
    """A saga's history: every transition and operator action, with who and why."""
    config = cs.settings()

    async def read(store: Any) -> list[Any]:
        state = await cs.find_in(store, saga)
        return list(await store.history(state.saga_id))

    records = cs.run(cs.with_store(config, read))
    if as_json:
        rows = [
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
        typer.echo(json.dumps(rows, indent=2))
        return
    table = [
        [
            str(r.seq),
            r.at.strftime("%H:%M:%S.%f")[:-3],
            r.event,
            r.step or "",
            r.actor,
            _detail(r.detail),
        ]
        for r in records
    ]
    typer.echo(render_table(["seq", "at", "event", "step", "actor", "detail"], table))


def _act(saga: str, who: str | None, action: Callable[[], OperatorEvent]) -> None:
    config = cs.settings()
    actor = f"operator:{who or getpass.getuser()}"

    async def act(engine: Any) -> SagaState:
        state = await cs.find_in(engine.store, saga)
        done: SagaState = await engine.operate(state.saga_id, action(), actor)
        return done

    state = cs.run(cs.with_engine(config, act))
    typer.echo(f"{state.saga_id}: {state.status}")


def _detail(detail: dict[str, Any] | None, width: int = 70) -> str:
    if not detail:
        return ""
    text = json.dumps(detail, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"
