"""`saga protocol`: wire protocol v1 as data, as committed in docs/protocol/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def protocol(
    out: Annotated[
        Path, typer.Option(help="The directory to write the schemas and asyncapi.json into.")
    ] = Path("docs/protocol"),
) -> None:
    """Write the JSON Schema of every message and the AsyncAPI document (docs/protocol/)."""
    from adapters.protocol import write

    for path in write(out):
        typer.echo(str(path))
