"""What a deployment runs: `saga migrate` once per release, then the long-running processes,
`saga run` (the orchestrator) and `saga worker` (the local steps of the saga modules)."""

from __future__ import annotations

import typer

from adapters.cli import support as cs


def migrate() -> None:
    """Create the database if missing and apply every migration; say what was done."""
    from adapters.postgres.migrate import upgrade

    config = cs.settings()
    done = cs.run(upgrade(config.database_url))
    typer.echo("\n".join(done.report()))


def run() -> None:
    """Run the orchestrator: consume starts, cancels and replies; fire timers; relay the outbox."""
    from adapters.archive import ArchiveUnusable
    from adapters.http.serve import HttpSetupError
    from adapters.runtime import Orchestrator, run_until_signalled

    config = cs.settings(long_running=True)
    try:
        cs.run(run_until_signalled(Orchestrator(config)))
    except ArchiveUnusable as exc:
        typer.secho(f"error: SAGA_RETENTION_ARCHIVE: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    except HttpSetupError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def worker() -> None:
    """Run the local steps (Python functions) of the loaded saga modules."""
    from adapters.local_steps import local_steps
    from adapters.participant.serve import serve
    from orchestrator.registry import load_modules

    config = cs.settings(long_running=True)
    participant = local_steps(load_modules(config.modules))
    if not participant.commands():
        typer.secho("no local steps in the loaded saga modules; nothing to do", err=True)
        raise typer.Exit(1)
    cs.run(serve(config, [participant]))
