"""`saga prune`: delete finished sagas older than an age, now, in batches (what `saga run`
does by itself when SAGA_RETENTION is set), with `--archive` each batch written first to a
directory or standard output. See adapters/postgres/retention.py for what goes and what
stays, adapters/archive.py for what an archive holds."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from adapters.cli import support as cs
from adapters.durations import parse_duration

if TYPE_CHECKING:
    from adapters.postgres.retention import Archive, Pruned
    from adapters.settings import Settings

# Sagas per transaction unless --batch says otherwise. Not adapters.postgres.retention's
# DEFAULT_BATCH (the sweep's, also 1000): importing the PostgreSQL adapter here would cost
# every `saga` command its import, --help included; the prune imports it when it runs.
BATCH = 1000


def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Age since the saga ended, e.g. 30d, 12h, 90m (units s, m, h, d, w).",
        ),
    ],
    batch: Annotated[
        int, typer.Option(min=1, max=100_000, help="Sagas deleted per transaction.")
    ] = BATCH,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
    ] = False,
    archive: Annotated[
        str | None,
        typer.Option(
            "--archive",
            metavar="DIR|-",
            help="Write each batch's sagas first, whole (steps, history) and unmasked, as "
            "gzip JSON Lines: a file per batch in DIR, or - for standard output; a batch "
            "that cannot be written is not deleted.",
        ),
    ] = None,
) -> None:
    """Delete completed, compensated and cancelled sagas that ended longer ago than
    --older-than, with their steps and history, and held cancels as old. Parked (failed),
    paused and running sagas stay, whatever their age."""
    from adapters.archive import ArchiveFailed, DirectoryArchive

    age = _age(older_than)
    config = cs.settings()
    if dry_run:
        sagas, inbox = cs.run(_count(config, age))
        typer.echo(f"would delete {sagas} sagas and {inbox} held cancels (dry run)")
        return
    target = None if archive is None else _archive(archive, config)
    # With the archive on standard output, what the command says goes to standard error.
    say_err = archive == "-"
    archived = [0]
    try:
        done = cs.run(_prune(config, age, batch, target, archived))
    except ArchiveFailed as exc:
        typer.secho(
            f"error: {exc}: that batch was not deleted; the prune stopped after deleting "
            f"{archived[0]} sagas, every one of them archived",
            fg="red",
            err=True,
        )
        raise typer.Exit(1) from exc
    typer.echo(
        f"deleted {done.sagas} sagas and {done.inbox} held cancels in {done.batches} batches, "
        f"{done.seconds:.1f}s ({done.sagas_per_second:.0f} sagas/s)",
        err=say_err,
    )
    if isinstance(target, DirectoryArchive):
        typer.echo(
            f"archived {done.sagas} sagas in {len(target.files)} files in {target.directory}",
            err=say_err,
        )


def _archive(raw: str, config: Settings) -> Archive:
    """Where --archive writes; a directory it cannot write, or a terminal, exits 2 before
    anything is pruned."""
    from adapters.archive import ArchiveUnusable, DirectoryArchive, StreamArchive

    registry = cs.loaded_definitions(config)  # to show wait steps as status does
    if raw == "-":
        if sys.stdout.isatty():
            typer.secho(
                "error: --archive - writes gzip to standard output, which is a terminal: "
                "redirect it to a file or a pipe (… --archive - > sagas.jsonl.gz)",
                fg="red",
                err=True,
            )
            raise typer.Exit(2)
        return StreamArchive(sys.stdout.buffer, registry)
    try:
        return DirectoryArchive(raw, registry)
    except ArchiveUnusable as exc:
        typer.secho(f"error: --archive: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc


def _age(text: str) -> timedelta:
    try:
        age = parse_duration(text)
    except ValueError as exc:
        typer.secho(f"error: --older-than: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    if age <= timedelta(0):
        typer.secho("error: --older-than must be positive", fg="red", err=True)
        raise typer.Exit(2)
    return age


async def _count(config: Settings, age: timedelta) -> tuple[int, int]:
    from adapters.postgres import retention
    from adapters.postgres.database import make_engine
    from adapters.postgres.schema import require_schema

    db = make_engine(config.database_url, pool_size=1)
    try:
        await require_schema(db)
        now = (await cs.database_clock(config, db))()
        return await retention.prunable(db, age, now)
    finally:
        await db.dispose()


async def _prune(
    config: Settings, age: timedelta, batch: int, archive: Archive | None, pruned: list[int]
) -> Pruned:
    """The prune; `pruned[0]` counts the sagas deleted, should it stop half-way. The age
    counts back from the database's time, the clock `saga run` stamped the sagas with."""
    from adapters.postgres import retention
    from adapters.postgres.database import make_engine
    from adapters.postgres.schema import require_schema

    def count(n: int) -> None:
        pruned[0] += n

    db = make_engine(config.database_url, pool_size=1)
    try:
        await require_schema(db)
        now = (await cs.database_clock(config, db))()
        return await retention.prune(db, age, batch=batch, now=now, archive=archive, on_batch=count)
    finally:
        await db.dispose()
