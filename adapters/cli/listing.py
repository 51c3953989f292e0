"""`saga list`: sagas matching filters (adapters/cli/filters.py), newest activity first, from
the database or over the HTTP API (--url); a table, or with --json each saga whole as
`saga status --json` prints it (masked by SAGA_REDACT_FIELDS on both paths; `--reveal` on the
database). A step waiting for a signal is marked as such in the table's step column."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer

from adapters.cli import support as cs
from adapters.cli.api import ApiClient, state_from_api, waits_from_api
from adapters.cli.filters import query_of, read_filter, takes
from adapters.cli.support import JsonOpt, RevealOpt, TokenOpt, UrlOpt
from adapters.http.models import SagaFilter
from adapters.saga_json import state_json, waits_of
from adapters.text_table import render_table
from orchestrator.state import SagaState
from orchestrator.waiting import waiting_for as waits_now


@takes(read_filter, "where")
def list_(
    *,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    reveal: RevealOpt = False,
    where: SagaFilter | None,
) -> None:
    """List sagas, newest activity first."""
    where = where or SagaFilter()
    if url:
        cs.refuse_reveal_over_api(reveal)
        with ApiClient(url, token) as api:
            found = list(api.sagas(where.model_dump(mode="json", exclude_none=True), limit))
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
        query = query_of(where, registry, limit=limit)
        if query.waiting_for is not None and not query.waiting_for.definitions:
            typer.secho(
                f"warning: no saga of SAGA_MODULES waits for signal {where.waiting_for!r}",
                fg="yellow",
                err=True,
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
