"""Wire protocol v1 as data: a JSON Schema per message body and an AsyncAPI 3.0 document of
the broker's exchanges, queues and headers, generated from the code and committed under
docs/protocol/ (`saga protocol` writes them; tests/unit/test_protocol_files.py fails when the
committed files differ from what the code generates)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adapters.protocol.asyncapi import document
from adapters.protocol.schemas import schemas

ASYNCAPI = "asyncapi.json"
SCHEMA_SUFFIX = ".schema.json"


def documents() -> dict[str, dict[str, Any]]:
    """File name -> content: every schema, and the AsyncAPI document that refers to them."""
    return {**schemas(), ASYNCAPI: document()}


def render(content: dict[str, Any]) -> str:
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[Path]:
    """Write every document into `directory` (created if missing) and delete the schema files
    there that no message has any more; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = documents()
    for stale in directory.glob(f"*{SCHEMA_SUFFIX}"):
        if stale.name not in wanted:
            stale.unlink()
    written = []
    for name, content in wanted.items():
        path = directory / name
        path.write_text(render(content), encoding="utf-8")
        written.append(path)
    return written
