"""`saga list`: sagas matching filters, newest activity first, from the database or over the
HTTP API (--url); a table, or with --json each saga whole as `saga status --json` prints it."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Annotated

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient
from adapters.cli.status import state_json
from adapters.cli.support import JsonOpt, TokenOpt, UrlOpt
from adapters.text_table import render_table
from orchestrator.state import SagaState, SagaStatus


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
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List sagas, newest activity first."""
    from orchestrator.ports import SagaQuery

    after = cs.parse_time("--created-after", created_after)
    before = cs.parse_time("--created-before", created_before)
    if url:
        params = {
            "status": status_,
            "saga": saga,
            "version": version,
            "key": key,
            "step": step,
            "created_after": None if after is None else after.isoformat(),
            "created_before": None if before is None else before.isoformat(),
            "in_status_for_minutes": in_status_for,
        }
        with ApiClient(url, token) as api:
            found = list(api.sagas(params, limit))
            if as_json:  # the whole saga, as from the database: one request each
                states = [api.saga(s["saga_id"]) for s in found]
                typer.echo(json.dumps([state_json(s) for s in states], indent=2))
                return
        rows = [
            _row(
                s["saga_id"],
                s["saga"],
                s["key"],
                s["status"],
                current=s["current_steps"],
                updated_at=datetime.fromisoformat(s["updated_at"]),
            )
            for s in found
        ]
    else:
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
        )
        states = cs.run(cs.with_store(cs.settings(), lambda st: st.find(query)))
        if as_json:
            typer.echo(json.dumps([state_json(s) for s in states], indent=2))
            return
        rows = [
            _row(
                str(s.saga_id),
                s.name,
                s.key,
                s.status,
                current=_current_steps(s),
                updated_at=s.updated_at,
            )
            for s in states
        ]
    typer.echo(render_table(["id", "saga", "key", "status", "step", "updated"], rows))


def _row(
    saga_id: str, name: str, key: str, status: str, *, current: list[str], updated_at: datetime
) -> list[str]:
    return [saga_id, name, key, status, ",".join(current) or "-", updated_at.strftime("%H:%M:%S")]


def _current_steps(state: SagaState) -> list[str]:
    return [s.name for s in state.steps if s.status in ("running", "compensating")]
