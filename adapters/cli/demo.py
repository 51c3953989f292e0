"""`saga demo`: the README's quickstart, which runs the orchestrator and the example shop
(examples/) and places real orders. `examples` is imported only when the command runs, so the
CLI imports without it."""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.cli import support as cs


def demo(
    orders: Annotated[int, typer.Option(help="How many orders to place.", min=4, max=10_000)] = 40,
) -> None:
    """Run the orchestrator and the example shop, place real orders, print what happened."""
    from adapters.logging import configure_logging
    from examples.demo import run_demo

    config = cs.settings()
    # This process runs the shop order service's starter relay: its info lines (a batch
    # relayed) would break up the summary. Warnings still show; the other processes' logs
    # are in the directory the summary names.
    configure_logging("console" if config.log_format == "auto" else config.log_format, "warning")
    ok = cs.run(run_demo(config, orders=orders))
    raise typer.Exit(0 if ok else 1)
