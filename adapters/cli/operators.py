"""The operator's ladder for sagas that cannot finish on their own: `retry`, `skip`,
`mark-compensated`, `pause`, `resume`, and `history` to see what happened and who did what.
Each action takes one saga, or filter options for every saga they match (adapters/cli/bulk.py).

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
from adapters.cli.bulk import BulkOptions, filter_form, target
from adapters.cli.bulk import act as bulk_act
from adapters.cli.status import WideOpt, history_table
from adapters.cli.support import JsonOpt, RevealOpt, TokenOpt, UrlOpt
from adapters.http.models import SagaFilter
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
# The actions take one saga, or filter options for every saga they match (adapters/cli/bulk.py).
OneSagaArg = Annotated[
    str | None,
    typer.Argument(
        help="Saga id or start key; or none, and filter options (--status, --step, ...) "
        "for every saga they match.",
        show_default=False,
    ),
]
ReasonOpt = Annotated[str, typer.Option("--reason", "-r", help="Why; recorded in history.")]
WhoOpt = Annotated[
    str | None, typer.Option(help="Who acts; recorded in history. Default: your user name.")
]


@filter_form
def retry(
    saga: OneSagaArg = None,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    where: SagaFilter | None,
    bulk: BulkOptions,
) -> None:
    """Continue a parked (failed) saga from where it stopped, with a fresh retry budget; with
    filter options, every saga they match (`saga retry --status failed --step
    notify_customer -r WHY`)."""
    _act(saga, RetryRequested(reason), who=who, url=url, token=token, where=where, bulk=bulk)


@filter_form
def skip(
    saga: OneSagaArg = None,
    step: Annotated[
        str | None,
        typer.Argument(
            help="The step to treat as done. With filter options it is --step, which also filters.",
            show_default=False,
        ),
    ] = None,
    *,
    reason: ReasonOpt,
    result: Annotated[
        str, typer.Option(help="The step's result as JSON (later steps may use it).")
    ] = "null",
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    where: SagaFilter | None,
    bulk: BulkOptions,
) -> None:
    """Treat a step as done with a supplied result: a step parked past the pivot (the saga
    then continues), or a pending step of a paused saga; with filter options, in every saga
    they match (`saga skip --status failed --step notify_customer -r WHY`)."""
    value = cs.parse_json("--result", result)
    name = step if where is None else where.step
    if name is None:
        where_given = "--step STEP (it filters the sagas too)" if where else "STEP after the saga"
        typer.secho(f"error: say which step to skip: {where_given}", fg="red", err=True)
        raise typer.Exit(2)
    _act(
        saga,
        SkipRequested(step=name, result=value, reason=reason),
        who=who,
        url=url,
        token=token,
        where=where,
        bulk=bulk,
    )


@filter_form
def mark_compensated(
    saga: OneSagaArg = None,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    where: SagaFilter | None,
    bulk: BulkOptions,
) -> None:
    """Record that the parked compensation was done by hand (--reason is the note); the saga
    then undoes the remaining steps. With filter options, for every saga they match."""
    _act(saga, MarkCompensated(reason), who=who, url=url, token=token, where=where, bulk=bulk)


@filter_form
def pause(
    saga: OneSagaArg = None,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    where: SagaFilter | None,
    bulk: BulkOptions,
) -> None:
    """Dispatch nothing new and hold the saga's timers until `resume` (replies of commands
    already sent are still recorded). With filter options, every saga they match."""
    _act(saga, PauseRequested(reason), who=who, url=url, token=token, where=where, bulk=bulk)


@filter_form
def resume(
    saga: OneSagaArg = None,
    *,
    reason: ReasonOpt,
    who: WhoOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    where: SagaFilter | None,
    bulk: BulkOptions,
) -> None:
    """Resume a paused saga: timers that came due meanwhile fire, dispatch continues. With
    filter options, every saga they match."""
    _act(saga, ResumeRequested(reason), who=who, url=url, token=token, where=where, bulk=bulk)


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
    saga: str | None,
    action: OperatorEvent,
    *,
    who: str | None,
    url: str | None,
    token: str | None,
    where: SagaFilter | None,
    bulk: BulkOptions,
) -> None:
    """On the HTTP API at `url`, or (None) on the database; on the saga `saga`, or on every
    saga `where` matches."""
    who = who or getpass.getuser()
    if target(saga, where, bulk) is not None:
        assert where is not None
        bulk_act(where, action, bulk, who=who, url=url, token=token)
        return
    assert saga is not None
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
