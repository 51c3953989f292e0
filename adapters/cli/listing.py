"""`saga list`: sagas matching filters, newest activity first, from the database or over the
HTTP API (--url); a table, or with --json each saga whole as `saga status --json` prints it
(masked by SAGA_REDACT_FIELDS on both paths; `--reveal` on the database). A step waiting for
a signal is marked as such in the table's step column."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient, state_from_api, waits_from_api
from adapters.cli.support import JsonOpt, RevealOpt, TokenOpt, UrlOpt
from adapters.saga_json import state_json, waits_of
from adapters.text_table import render_table
from orchestrator.state import SagaState, SagaStatus
from orchestrator.waiting import waiting_for as waits_now


def list_(
    *,
    status_: Annotated[
        SagaStatus | None, typer.Option("--status", help="Only sagas in this status.")
    ] = None,
    saga: Annotated[str | None, typer.Option(help="Only this saga name.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
    version: Annotated[int | None, typer.Option(min=1, help="Only this saga version.")] = None,
    key: Annotated[str | None, typer.Option(help="Only sagas with this start key.")] = None,
    step: Annotated[
        str | None,
        typer.Option(help="Only sagas where this step runs, compensates, or failed and parks."),
    ] = None,
    created_after: Annotated[
        str | None, typer.Option(help="Created at or after (ISO 8601; UTC without offset).")
    ] = None,
    created_before: Annotated[str | None, typer.Option(help="Created before.")] = None,
    in_status_for: Annotated[
        int | None,
        typer.Option(min=0, help="In their current status for at least this many minutes."),
    ] = None,
    waiting_for: Annotated[
        str | None,
        typer.Option(
            metavar="SIGNAL",
            help="Only sagas waiting now for this signal (their wait step of that name).",
        ),
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    reveal: RevealOpt = False,
) -> None:
    """List sagas, newest activity first."""
    from orchestrator.ports import SagaQuery

    after = cs.parse_time("--created-after", created_after)
    before = cs.parse_time("--created-before", created_before)
    if url:
        cs.refuse_reveal_over_api(reveal)
        params = {
            "status": status_,
            "saga": saga,
            "version": version,
            "key": key,
            "step": step,
            "created_after": None if after is None else after.isoformat(),
            "created_before": None if before is None else before.isoformat(),
            "in_status_for_minutes": in_status_for,
            "waiting_for": waiting_for,
        }
        with ApiClient(url, token) as api:
            found = list(api.sagas(params, limit))
            if as_json:  # the whole saga, as from the database: one request each
                details = [api.saga_detail(s["saga_id"]) for s in found]
                shown = [state_json(state_from_api(d), waits_from_api(d)) for d in details]
                typer.echo(json.dumps(shown, indent=2))
                return
        rows = [
            _row(
                s["saga_id"],
                s["saga"],
                s["key"],
                s["status"],
                current=s["current_steps"],
                waiting=s.get("waiting_for", []),
                updated_at=datetime.fromisoformat(s["updated_at"]),
            )
            for s in found
        ]
    else:
        config = cs.settings()
        registry = cs.loaded_definitions(config)
        waiting = None if waiting_for is None else registry.waiting_for(waiting_for)
        if waiting is not None and not waiting.definitions:
            typer.secho(
                f"warning: no saga of SAGA_MODULES waits for signal {waiting_for!r}",
                fg="yellow",
                err=True,
            )
        query = SagaQuery(
            status=status_,
            saga=saga,
            limit=limit,
            version=version,
            key=key,
            step=step,
            created_after=after,
            created_before=before,
            in_status_for=None if in_status_for is None else timedelta(minutes=in_status_for),
            waiting_for=waiting,
        )
        states = cs.run(cs.with_store(config, lambda st: st.find(query)))
        views = [waits_of(registry, s) for s in states]
        if as_json:
            # The table shows no saga data; the whole sagas are masked as the API masks them.
            mask = cs.masking(config, reveal, "list", [s.saga_id for s in states])
            shown = [state_json(mask.state(s), v) for s, v in zip(states, views, strict=True)]
            typer.echo(json.dumps(shown, indent=2))
            return
        rows = [
            _row(
                str(s.saga_id),
                s.name,
                s.key,
                s.status,
                current=_current_steps(s),
                waiting=waits_now(v),
                updated_at=s.updated_at,
            )
            for s, v in zip(states, views, strict=True)
        ]
    typer.echo(render_table(["id", "saga", "key", "status", "step", "updated"], rows))


def _row(
    saga_id: str,
    name: str,
    key: str,
    status: str,
    *,
    current: list[str],
    waiting: list[str],
    updated_at: datetime,
) -> list[str]:
    steps = [f"{s} (waits for signal)" if s in waiting else s for s in current]
    return [saga_id, name, key, status, ",".join(steps) or "-", updated_at.strftime("%H:%M:%S")]


def _current_steps(state: SagaState) -> list[str]:
    return [s.name for s in state.steps if s.status in ("running", "compensating")]
