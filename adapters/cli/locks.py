"""`saga locks`: the semantic locks sagas hold and the starts waiting for them.

A lock held by a parked (failed) saga stays until an operator finishes that saga (`retry`,
`skip`, `mark-compensated`): the table shows the holder's status so that case stands out.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from adapters.cli import support as cs
from adapters.cli.support import JsonOpt
from adapters.text_table import render_table
from orchestrator.locks import HeldLock, LocksView, LockWaiter
from orchestrator.state import SagaStatus

_TIME = "%Y-%m-%d %H:%M:%S"


def locks(as_json: JsonOpt = False) -> None:
    """List held semantic locks (resource, holder, since) and waiting starts, oldest first."""
    config = cs.settings()
    view: LocksView = cs.run(cs.with_store(config, lambda store: store.locks()))
    if as_json:
        typer.echo(json.dumps(_json(view), indent=2))
        return
    typer.echo("held:")
    typer.echo(
        render_table(
            ["resource", "saga id", "saga", "key", "status", "since"],
            [
                [
                    h.resource,
                    str(h.saga_id),
                    h.saga,
                    h.key,
                    _status(h.status),
                    h.acquired_at.strftime(_TIME),
                ]
                for h in view.held
            ],
        )
    )
    typer.echo("\nwaiting:")
    typer.echo(
        render_table(
            ["resources", "saga", "key", "enqueued", "expires"],
            [
                [
                    ",".join(w.resources),
                    f"{w.saga} v{w.version}",
                    w.key,
                    w.enqueued_at.strftime(_TIME),
                    w.expires_at.strftime(_TIME) if w.expires_at else "-",
                ]
                for w in view.waiting
            ],
        )
    )
    for h in view.held:
        if h.status == SagaStatus.FAILED:
            typer.secho(
                f"note: {h.resource} is held by parked saga {h.saga_id}: it is released when "
                "an operator finishes that saga (retry, skip or mark-compensated)",
                fg="yellow",
                err=True,
            )


def _status(status: SagaStatus | None) -> str:
    return "?" if status is None else status.value


def _json(view: LocksView) -> dict[str, Any]:
    return {
        "held": [_held(h) for h in view.held],
        "waiting": [_waiter(w) for w in view.waiting],
    }


def _held(lock: HeldLock) -> dict[str, Any]:
    return {
        "resource": lock.resource,
        "saga_id": str(lock.saga_id),
        "saga": lock.saga,
        "key": lock.key,
        "status": None if lock.status is None else lock.status.value,
        "since": lock.acquired_at.isoformat(),
    }


def _waiter(waiter: LockWaiter) -> dict[str, Any]:
    return {
        "resources": list(waiter.resources),
        "saga": waiter.saga,
        "version": waiter.version,
        "key": waiter.key,
        "enqueued_at": waiter.enqueued_at.isoformat(),
        "expires_at": waiter.expires_at.isoformat() if waiter.expires_at else None,
    }
