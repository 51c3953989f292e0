"""What `saga start` does with a start once its options are read: check it where the user
makes it, then publish it to the `sagas` exchange (or post it to the HTTP API with --url).

A start naming no loaded saga, or with input its saga's model refuses, would be dead-lettered
by the orchestrator, and `saga status` would then find no saga: so the command checks both
against the definitions of SAGA_MODULES first and publishes nothing if either is wrong (exit
2). Over --url the API checks them against the definitions of the `saga run` serving it, and
answers what a start came to, which is printed: a key that has a saga already, started with
other input, is reported rather than passed over.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from pydantic import ValidationError

from adapters.cli_api import EXIT_BAD_INPUT, ApiClient
from adapters.settings import Settings
from orchestrator.errors import DefinitionError, InvalidInput, UnknownSaga
from orchestrator.messages import StartSaga
from orchestrator.registry import load_modules

# How the user gave each field of a start, for an error message.
_OPTIONS = {"saga": "SAGA", "key": "--key", "input": "--input", "version": "--version"}


def request(saga: str, key: str, payload: Any, version: int | None) -> StartSaga:
    """The start as it travels, or exit 2 naming the option that is wrong."""
    try:
        return StartSaga(saga=saga, key=key, input=payload, version=version)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        option = _OPTIONS.get(str(first["loc"][0]), str(first["loc"][0])) if first["loc"] else ""
        _bad(f"{option}: {first['msg']}")


def check(config: Settings, start: StartSaga) -> None:
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


def over_api(url: str, token: str | None, start: StartSaga) -> None:
    """POST the start to the API and say what it came to; bad input exits 2, a start a
    semantic lock refuses exits 1 (adapters/cli_api.py)."""
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
