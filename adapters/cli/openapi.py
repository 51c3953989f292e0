"""`saga openapi`: the HTTP API's OpenAPI document, as committed in docs/openapi.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def openapi(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file instead of standard output.")
    ] = None,
) -> None:
    """Print the HTTP API's OpenAPI document (committed as docs/openapi.json)."""
    from adapters.http.app import openapi_document

    text = json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
