"""`saga demo`: the README's quickstart, which runs the orchestrator and the example shop
(examples/) and places real orders; with `--serve` it keeps them running after the summary,
with the dashboard, until Ctrl-C. `examples` is imported only when the command runs, so the
CLI imports without it."""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.cli import support as cs


def demo(
    orders: Annotated[int, typer.Option(help="How many orders to place.", min=4, max=10_000)] = 40,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="After the summary, keep the orchestrator, the shop and the dashboard running "
            "(on SAGA_HTTP_BIND, default 127.0.0.1:8080) and print the dashboard's address, "
            "until Ctrl-C.",
        ),
    ] = False,
) -> None:
    """Run the orchestrator and the example shop, place real orders, print what happened."""
    from adapters.http.serve import HttpSetupError
    from adapters.logging import configure_logging
    from examples.demo import run_demo, serving_plan

    config = cs.settings()
    # This process runs the shop order service's starter relay: its info lines (a batch
    # relayed) would break up the summary. Warnings still show; the other processes' logs
    # are in the directory the summary names.
    configure_logging("console" if config.log_format == "auto" else config.log_format, "warning")
    try:
        # Before anything starts: a taken port or a bad bind is one line, exit 2.
        plan = serving_plan(config) if serve else None
    except HttpSetupError as exc:
        typer.secho(f"error: --serve: {exc}", fg="red", err=True)
        raise typer.Exit(2) from exc
    ok = cs.run(run_demo(config, orders=orders, serve=plan))
    raise typer.Exit(0 if ok else 1)
