"""The `saga` command line: the typer app, its commands in the order `saga --help` lists them
(one module per group of commands), and `main`, the console script. Every option falls back to
a `SAGA_*` environment variable."""

from __future__ import annotations

import sys

import typer

from adapters.cli import (
    cancel,
    definitions,
    demo,
    listing,
    locks,
    openapi,
    operators,
    processes,
    protocol,
    relay,
    retention,
    signal,
    start,
    status,
)
from orchestrator.errors import DefinitionError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Saga orchestrator: run the engine, start and inspect sagas, act as an operator.",
)

app.command()(processes.migrate)
app.command()(processes.run)
app.command()(openapi.openapi)
app.command()(protocol.protocol)
app.command()(processes.worker)
app.command()(relay.relay)
app.command()(demo.demo)
app.command()(start.start)
app.command()(status.status)
app.command("list")(listing.list_)
app.command()(cancel.cancel)
app.command()(signal.signal)
app.command()(operators.retry)
app.command()(operators.skip)
app.command("mark-compensated")(operators.mark_compensated)
app.command()(operators.pause)
app.command()(operators.resume)
app.command()(operators.history)
app.command()(definitions.definitions)
app.command()(locks.locks)
app.command()(retention.prune)


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
