"""`saga prune`: delete finished sagas older than an age, now, in batches (what `saga run`
does by itself when SAGA_RETENTION is set). See adapters/postgres/retention.py for what goes
and what stays."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from adapters.cli import support as cs
from adapters.durations import parse_duration
from adapters.postgres import retention
from adapters.postgres.database import make_engine
from adapters.postgres.retention import DEFAULT_BATCH, Pruned
from adapters.postgres.schema import require_schema


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
    ] = DEFAULT_BATCH,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would go; delete nothing.")
    ] = False,
) -> None:
    """Delete completed, compensated and cancelled sagas that ended longer ago than
    --older-than, with their steps and history, and held cancels as old. Parked (failed),
    paused and running sagas stay, whatever their age."""
    age = _age(older_than)
    config = cs.settings()
    if dry_run:
        sagas, inbox = cs.run(_count(config.database_url, age))
        typer.echo(f"would delete {sagas} sagas and {inbox} held cancels (dry run)")
        return
    done = cs.run(_prune(config.database_url, age, batch))
    typer.echo(
        f"deleted {done.sagas} sagas and {done.inbox} held cancels in {done.batches} batches, "
        f"{done.seconds:.1f}s ({done.sagas_per_second:.0f} sagas/s)"
    )


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


async def _count(url: str, age: timedelta) -> tuple[int, int]:
    db = make_engine(url, pool_size=1)
    try:
        await require_schema(db)
        return await retention.prunable(db, age)
    finally:
        await db.dispose()


async def _prune(url: str, age: timedelta, batch: int) -> Pruned:
    db = make_engine(url, pool_size=1)
    try:
        await require_schema(db)
        return await retention.prune(db, age, batch=batch)
    finally:
        await db.dispose()
