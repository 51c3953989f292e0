"""The `saga` command line. Every option falls back to a `SAGA_*` environment variable."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from adapters import cli_definitions, cli_locks, cli_operators, cli_retention, cli_status
from adapters import cli_support as cs
from adapters.cli_api import ApiClient
from adapters.cli_support import JsonOpt, TokenOpt, UrlOpt
from adapters.text_table import render_table
from orchestrator.errors import DefinitionError
from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState, SagaStatus

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Saga orchestrator: run the engine, start and inspect sagas, act as an operator.",
)


@app.command()
def migrate() -> None:
    """Create the database if missing and apply every migration; say what was done."""
    from adapters.postgres.migrate import upgrade

    config = cs.settings()
    done = cs.run(upgrade(config.database_url))
    typer.echo("\n".join(done.report()))


@app.command()
def run() -> None:
    """Run the orchestrator: consume starts, cancels and replies; fire timers; relay the outbox."""
    from adapters.http.serve import HttpSetupError
    from adapters.runtime import Orchestrator, run_until_signalled

    config = cs.settings(long_running=True)
    try:
        cs.run(run_until_signalled(Orchestrator(config)))
    except HttpSetupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


@app.command()
def openapi(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file instead of standard output.")
    ] = None,
) -> None:
    """Print the HTTP API's OpenAPI document (committed as docs/openapi.json)."""
    from adapters.http.app import openapi_document

    text = json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@app.command()
def worker() -> None:
    """Run the local steps (Python functions) of the loaded saga modules."""
    from adapters.participants import local_steps, serve
    from orchestrator.registry import load_modules

    config = cs.settings(long_running=True)
    participant = local_steps(load_modules(config.modules))
    if not participant.commands():
        typer.secho("no local steps in the loaded saga modules; nothing to do", err=True)
        raise typer.Exit(1)
    cs.run(serve(config, [participant]))


@app.command()
def demo(
    orders: Annotated[int, typer.Option(help="How many orders to place.", min=4, max=10_000)] = 40,
) -> None:
    """Run the orchestrator and the example shop, place real orders, print what happened."""
    from examples.demo import run_demo

    config = cs.settings()
    ok = cs.run(run_demo(config, orders=orders))
    raise typer.Exit(0 if ok else 1)


@app.command()
def start(
    saga: Annotated[str, typer.Argument(help="Saga name, e.g. order.")],
    input: Annotated[str, typer.Option("--input", "-i", help="Input as JSON, or @file.json.")],
    key: Annotated[str | None, typer.Option(help="Idempotency key; a new one by default.")] = None,
    version: Annotated[
        int | None,
        typer.Option(
            "--version", min=1, help="Pin a saga version; the newest one loaded by default."
        ),
    ] = None,
    *,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Publish a start request to the `sagas` exchange, as any service would, and print its
    key. The saga name and the input are checked against the definitions of SAGA_MODULES
    first: if either is wrong, nothing is published (exit 2). With --url, the HTTP API
    starts it and says what came of it (a key that has a saga already, with other input,
    is reported)."""
    from adapters import cli_start
    from adapters.rabbitmq.client import send_request

    raw = Path(input[1:]).read_text() if input.startswith("@") else input
    payload = cs.parse_json("--input", raw)
    request = cli_start.request(saga, key or f"cli-{uuid.uuid4()}", payload, version)
    if url:
        cli_start.over_api(url, token, request)
        return
    config = cs.settings()
    cli_start.check(config, request)
    cs.run(send_request(config, "start", request))
    typer.echo(request.key)


@app.command()
def status(
    saga: Annotated[str, typer.Argument(help="Saga id or start key.")],
    as_json: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
    wide: cli_status.WideOpt = False,
) -> None:
    """Show a saga, its steps and how each one's compensation went; --wide adds the history
    and cuts nothing short."""
    history: list[HistoryRecord] = []
    if url:
        with ApiClient(url, token) as api:
            state = api.saga(saga)
            if not as_json:
                history = api.history(state.saga_id)
    else:

        async def read(store: Any) -> SagaState:
            found = await cs.find_in(store, saga)
            if not as_json:
                history.extend(await store.history(found.saga_id))
            return found

        state = cs.run(cs.with_store(cs.settings(), read))
    if as_json:
        typer.echo(json.dumps(_state_json(state), indent=2))
        return
    typer.echo(cli_status.render(state, history, wide=wide))


@app.command("list")
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
                typer.echo(json.dumps([_state_json(s) for s in states], indent=2))
                return
        rows = [
            _list_row(
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
            typer.echo(json.dumps([_state_json(s) for s in states], indent=2))
            return
        rows = [
            _list_row(
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


def _list_row(
    saga_id: str, name: str, key: str, status: str, *, current: list[str], updated_at: datetime
) -> list[str]:
    return [saga_id, name, key, status, ",".join(current) or "-", updated_at.strftime("%H:%M:%S")]


@app.command()
def cancel(
    saga: Annotated[str, typer.Argument(help="Saga id or start key.")],
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
) -> None:
    """Cancel a saga before its pivot; compensations run in reverse. Exit 1 when refused, 3
    when no saga (nor a start waiting for a semantic lock) has this id or key: a typo, most
    likely. A cancel for a start still to come needs --hold."""
    from orchestrator.engine import CancelOutcome, Engine
    from orchestrator.errors import SagaNotFound
    from orchestrator.messages import CancelSaga

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


def _state_json(state: SagaState) -> dict[str, Any]:
    return {
        "saga_id": str(state.saga_id),
        "saga": state.name,
        "version": state.version,
        "key": state.key,
        "status": state.status.value,
        "input": state.input,
        "error": state.error,
        "cancel_reason": state.cancel_reason,
        "parent": None if state.parent is None else state.parent.model_dump(mode="json"),
        "created_at": state.created_at.isoformat(),
        "updated_at": state.updated_at.isoformat(),
        "steps": [
            {
                "name": s.name,
                "status": s.status.value,
                "attempt": s.attempt,
                "compensation_attempt": s.compensation_attempt,
                "result": s.result,
                "error": s.error,
                **({} if s.item is None else {"item": s.payload}),
            }
            for s in state.steps
        ],
    }


def _current_steps(state: SagaState) -> list[str]:
    return [s.name for s in state.steps if s.status in ("running", "compensating")]


cli_operators.register(app)
cli_definitions.register(app)
cli_locks.register(app)
cli_retention.register(app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except DefinitionError as exc:
        # The saga modules (SAGA_MODULES) fail to import or break a rule, before any command
        # that loads them gets going: what to change, not a traceback.
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
