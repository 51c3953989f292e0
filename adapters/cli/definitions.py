"""`saga definitions`: every saga version that is registered, run on by unfinished instances, or
loaded by this process's modules. It tells when an old version's definition may leave the
modules (0 unfinished) and whether `saga run` with these modules would refuse to start."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import typer

from adapters.cli import support as cs
from adapters.cli.support import JsonOpt
from adapters.settings import Settings
from adapters.text_table import render_table
from orchestrator.ports import SagaStore
from orchestrator.versioning import DefinitionStatus, describe_missing, overview

FINGERPRINT_SHOWN = 12


def definitions(as_json: JsonOpt = False) -> None:
    """List saga versions: when registered, how many unfinished instances run on each, and
    whether the modules in SAGA_MODULES load it. Keep a version's definition loaded until it
    shows 0 unfinished."""
    config = cs.settings()
    rows = cs.run(_overview(config))
    if as_json:
        typer.echo(json.dumps([_json(r) for r in rows], indent=2))
    else:
        headers = [
            "saga",
            "version",
            "fingerprint",
            "registered (UTC)",
            "unfinished",
            "loaded here",
        ]
        typer.echo(render_table(headers, [_cells(r) for r in rows]))
    for row in rows:
        if row.needed:
            why = describe_missing(row.in_use())
            typer.secho(f"warning: `saga run` would refuse to start: {why}", fg="yellow", err=True)
        if row.changed:
            typer.secho(
                f"warning: saga {row.name!r} v{row.version} is loaded here with other steps "
                "than registered: `saga run` would refuse to start; bump the version",
                fg="yellow",
                err=True,
            )


async def _overview(config: Settings) -> list[DefinitionStatus]:
    from orchestrator.registry import load_modules

    # Loaded inside `cs.run`: a module that fails to import is reported, not a traceback.
    registry = load_modules(config.modules)

    async def gather(store: SagaStore) -> list[DefinitionStatus]:
        return overview(await store.definitions(), await store.versions_in_use(), registry)

    return await cs.with_store(config, gather)


def _cells(row: DefinitionStatus) -> list[str]:
    if not row.loaded:
        here = "no"
    elif row.changed:
        here = "yes, other steps"
    else:
        here = "yes"
    return [
        row.name,
        str(row.version),
        row.fingerprint[:FINGERPRINT_SHOWN] if row.fingerprint else "-",
        (
            row.registered_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            if row.registered_at
            else "not yet"
        ),
        str(row.unfinished),
        here,
    ]


def _json(row: DefinitionStatus) -> dict[str, Any]:
    return {
        "saga": row.name,
        "version": row.version,
        "fingerprint": row.fingerprint,
        "registered_at": row.registered_at.isoformat() if row.registered_at else None,
        "unfinished": row.unfinished,
        "loaded": row.loaded,
        "changed": row.changed,
    }
