"""The operator's ladder for sagas that cannot finish on their own: `retry`, `skip`,
`mark-compensated`, `pause`, `resume`, and `history` to see what happened and who did what.

Each action goes through the engine like any other transition (row lock, history, outbox) and
is recorded with who did it and why. A refused action (the saga is not in a state it applies
to) exits 1 with the reason.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated, Any

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient
from adapters.cli.status import WideOpt, history_table
from adapters.cli.support import JsonOpt, RevealOpt, TokenOpt, UrlOpt
from adapters.saga_json import history_json
from orchestrator.machine import (
    MarkCompensated,
    OperatorEvent,
    PauseRequested,
    ResumeRequested,
    RetryRequested,
    SkipRequested,
)
from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState

SagaArg = Annotated[str, typer.Argument(help="Saga id or start key.")]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why; recorded in history.")]
WhoOpt = Annotated[
    str | None, typer.Option(help="Who acts; recorded in history. Default: your user name.")
]


def retry(
    saga: SagaArg,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Continue a parked (failed) saga from where it stopped, with a fresh retry budget."""
    _act(saga, RetryRequested(reason), who, url, token)


def skip(
    saga: SagaArg,
    step: Annotated[str, typer.Argument(help="The step to treat as done.")],
    *,
    reason: ReasonOpt,
    result: Annotated[
        str, typer.Option(help="The step's result as JSON (later steps may use it).")
    ] = "null",
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Treat a step as done with a supplied result: a step parked past the pivot (the saga
    then continues), or a pending step of a paused saga."""
    value = cs.parse_json("--result", result)
    _act(saga, SkipRequested(step=step, result=value, reason=reason), who, url, token)


def mark_compensated(
    saga: SagaArg,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Record that the parked compensation was done by hand (--reason is the note); the saga
    then undoes the remaining steps."""
    _act(saga, MarkCompensated(reason), who, url, token)


def pause(
    saga: SagaArg,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Dispatch nothing new and hold the saga's timers until `resume` (replies of commands
    already sent are still recorded)."""
    _act(saga, PauseRequested(reason), who, url, token)


def resume(
    saga: SagaArg,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Resume a paused saga: timers that came due meanwhile fire, dispatch continues."""
    _act(saga, ResumeRequested(reason), who, url, token)


def history(
    saga: SagaArg,
    *,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    wide: WideOpt = False,
    reveal: RevealOpt = False,
) -> None:
    """A saga's history: every transition and operator action, with who and why; --wide
    prints each detail in full. Values SAGA_REDACT_FIELDS names are masked, as the API masks
    them, unless --reveal."""
    if url:
        cs.refuse_reveal_over_api(reveal)
        with ApiClient(url, token) as api:
            records = api.history(api.saga(saga).saga_id)
    else:

        async def read(store: Any) -> tuple[SagaState, list[HistoryRecord]]:
            state = await cs.find_in(store, saga)
            return state, list(await store.history(state.saga_id))

        config = cs.settings()
        state, found = cs.run(cs.with_store(config, read))
        records = cs.masking(config, reveal, "history", [state.saga_id]).history(found)
    if as_json:
        typer.echo(json.dumps(history_json(records), indent=2))
        return
    typer.echo(history_table(records, wide=wide))


def _act(
    saga: str, action: OperatorEvent, who: str | None, url: str | None, token: str | None
) -> None:
    """On the HTTP API at `url`, or (None) on the database."""
    who = who or getpass.getuser()
    if url:
        with ApiClient(url, token) as client:
            state = client.operate(client.saga(saga).saga_id, action, who)
        typer.echo(f"{state.saga_id}: {state.status}")
        return
    actor = f"operator:{who}"

    async def act(engine: Any) -> SagaState:
        target = await cs.find_in(engine.store, saga)
        done: SagaState = await engine.operate(target.saga_id, action, actor)
        return done

    state = cs.run(cs.with_engine(cs.settings(), act))
    typer.echo(f"{state.saga_id}: {state.status}")
