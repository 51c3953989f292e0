"""`saga start`: read a start from the options, check it where the user makes it, then publish
it to the `sagas` exchange (or post it to the HTTP API with --url).

A start naming no loaded saga, or with input its saga's model refuses, would be dead-lettered
by the orchestrator, and `saga status` would then find no saga: so the command checks both
against the definitions of SAGA_MODULES first and publishes nothing if either is wrong (exit
2). Over --url the API checks them against the definitions of the `saga run` serving it, and
answers what a start came to, which is printed: a key that has a saga already, started with
other input, is reported rather than passed over.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from adapters.cli import support as cs
from adapters.cli.api import EXIT_BAD_INPUT, ApiClient
from adapters.cli.support import TokenOpt, UrlOpt
from adapters.settings import Settings
from orchestrator.errors import DefinitionError, InvalidInput, UnknownSaga
from orchestrator.messages import StartSaga
from orchestrator.registry import load_modules

# How the user gave each field of a start, for an error message.
_OPTIONS = {"saga": "SAGA", "key": "--key", "input": "--input", "version": "--version"}


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
    from adapters.rabbitmq.client import send_request

    raw = Path(input[1:]).read_text() if input.startswith("@") else input
    payload = cs.parse_json("--input", raw)
    request = _request(saga, key or f"cli-{uuid.uuid4()}", payload, version)
    if url:
        _over_api(url, token, request)
        return
    config = cs.settings()
    _check(config, request)
    cs.run(send_request(config, "start", request))
    typer.echo(request.key)


def _request(saga: str, key: str, payload: Any, version: int | None) -> StartSaga:
    """The start as it travels, or exit 2 naming the option that is wrong."""
    try:
        return StartSaga(saga=saga, key=key, input=payload, version=version)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        option = _OPTIONS.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else ""
        _bad(f"{option}: {first['msg']}")


def _check(config: Settings, start: StartSaga) -> None:
    """Exit 2, saying what is wrong, unless the saga is one SAGA_MODULES defines and the
    input validates against its input model."""
    modules = ", ".join(config.modules)
    try:
        registry = load_modules(config.modules)
    except DefinitionError as exc:
        _bad(f"cannot check the start against SAGA_MODULES ({modules}): {exc}")
    try:
        registry.validate_start(start.saga, start.version, start.input)
    except UnknownSaga as exc:
        _bad(f"{exc} (loaded from SAGA_MODULES={modules}); nothing was published")
    except InvalidInput as exc:
        _bad(f"{exc}; nothing was published")


def _over_api(url: str, token: str | None, start: StartSaga) -> None:
    """POST the start to the API and say what it came to; bad input exits 2, a start a
    semantic lock refuses exits 1 (adapters/cli/api.py)."""
    with ApiClient(url, token) as api:
        answer = api.post("/api/sagas", start.model_dump(mode="json", exclude_none=True))
    typer.echo(start.key)
    if answer.get("queued"):
        typer.secho(
            "waiting for a semantic lock: it starts when the resource is free (`saga locks`)",
            err=True,
        )
    elif answer.get("input_differs"):
        typer.secho(
            f"warning: key {start.key!r} has saga {answer['saga_id']} ({answer['status']}) "
            "already, started with other input: nothing new was started (recorded in its "
            "history as start_repeated); give a new --key to start another saga",
            fg="yellow",
            err=True,
        )
    elif not answer.get("created"):
        typer.secho(
            f"key {start.key!r} has saga {answer['saga_id']} ({answer['status']}) already, "
            "with this input: nothing new was started",
            err=True,
        )


def _bad(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)
