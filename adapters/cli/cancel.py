"""`saga cancel`: cancel a saga by id, or the sagas of a start key, before their pivot; with
--hold, a cancel for a start still to come is held until it arrives; with filter options,
every saga they match (adapters/cli/bulk.py). On the database through the engine, or over
the HTTP API (--url)."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient
from adapters.cli.bulk import BulkOptions, filter_form, target
from adapters.cli.bulk import act as bulk_act
from adapters.cli.support import TokenOpt, UrlOpt
from adapters.http.models import SagaFilter


@filter_form
def cancel(
    saga: Annotated[
        str | None,
        typer.Argument(
            help="Saga id or start key; or none, and filter options (--status, --saga, ...) "
            "for every saga they match.",
            show_default=False,
        ),
    ] = None,
    *,
    reason: Annotated[
        str, typer.Option(help="Why; recorded in the saga's history.")
    ] = "cancelled by operator",
    who: Annotated[str, typer.Option(help="Who asks; recorded in history.")] = "cli",
    hold: Annotated[
        bool,
        typer.Option(
            "--hold",
            help="If no saga has this key yet, hold the cancel: it applies when a start with "
            "this key arrives. Without it, an unknown key is refused (exit 3).",
        ),
    ] = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    where: SagaFilter | None,
    bulk: BulkOptions,
) -> None:
    """Cancel a saga before its pivot; compensations run in reverse. Exit 1 when refused, 3
    when no saga (nor a start waiting for a semantic lock) has this id or key: a typo, most
    likely. A cancel for a start still to come needs --hold. With filter options, every
    saga they match (exit 1 when some were refused)."""
    from orchestrator.engine import CancelOutcome, Engine
    from orchestrator.errors import SagaNotFound
    from orchestrator.machine import CancelRequested
    from orchestrator.messages import CancelSaga

    if target(saga, where, bulk) is not None:
        assert where is not None
        if hold:
            typer.secho("error: --hold goes with a start key, not filter options", err=True)
            raise typer.Exit(2)
        bulk_act(where, CancelRequested(reason), bulk, who=who, url=url, token=token)
        return
    assert saga is not None
    try:
        saga_id: uuid.UUID | None = uuid.UUID(saga)
    except ValueError:
        saga_id = None
    held_line = (
        f"no saga has key {saga!r} yet: the cancel is held and applies when a start with "
        "this key arrives"
    )
    if url:
        with ApiClient(url, token) as api:
            if saga_id is not None:
                done = api.cancel(saga_id, reason, who)
                typer.echo(f"{done.saga_id}: {done.status}")
                return
            held, states = api.cancel_key(saga, reason, who, hold=hold)
        typer.echo(held_line if held else "\n".join(f"{s.saga_id}: {s.status}" for s in states))
        return
    config = cs.settings()
    request = (
        CancelSaga(key=saga, reason=reason)
        if saga_id is None
        else CancelSaga(saga_id=saga_id, reason=reason)
    )

    async def act(engine: Engine) -> CancelOutcome:
        try:
            return await engine.cancel(request, actor=f"operator:{who}", hold=hold)
        except SagaNotFound as exc:
            if request.key is None:
                raise
            raise SagaNotFound(
                f"{exc}; check the key, or pass --hold to hold the cancel for a start still to come"
            ) from exc

    outcome = cs.run(cs.with_engine(config, act))
    if outcome.held:
        typer.echo(held_line)
    elif outcome.refused:
        typer.secho(f"refused: {outcome.refused}", fg="yellow", err=True)
        raise typer.Exit(1)
    else:
        for saga_id, st in outcome.sagas:
            typer.echo(f"{saga_id}: {st}")
