"""Alembic environment and revisions: the schema's only source of truth in production.

Shipped inside the package so `saga migrate` works from an installed wheel; use
`adapters.postgres.migrate` rather than the `alembic` command line where you can.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config

HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None, connection: Any = None) -> Config:
    """A Config for this environment. `connection` (a sync Connection inside a transaction)
    makes env.py run on it instead of opening its own."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    if url is not None:
        config.attributes["url"] = url
    if connection is not None:
        config.attributes["connection"] = connection
    return config
