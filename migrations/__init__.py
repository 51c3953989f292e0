"""Alembic environment and revisions: the schema's only source of truth in production.

Shipped inside the package so `saga migrate` works from an installed wheel; use
`adapters.postgres.migrate` rather than the `alembic` command line where you can.

Expand/contract: during a rolling upgrade the previous release's orchestrators keep running
on the new schema until they are replaced, so a release's migrations only EXPAND it: new
tables, views, indexes (on a big table CONCURRENTLY, inside alembic's autocommit_block: each
revision runs in a transaction of its own, docs/operations.md), nullable columns or columns
with a server default. CONTRACT steps (drop or rename a table or column, change a type, SET
NOT NULL, add a constraint the old code could violate) ship one release later, once no
running orchestrator uses the old shape, in a migration that declares `CONTRACT = "why
..."`. tests/upgrade/expand_contract.py enforces this for every revision after 0008, and
tests/upgrade/test_rolling_upgrade.py runs the previous release beside this one over one
database (docs/operations.md, "Upgrades"). Sagas in flight keep their definition version
(docs/versioning.md), so their data survives the upgrade as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config

HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None, connection: Any = None) -> Config:
    """A Config for this environment. `connection` (a sync Connection, not in a
    transaction: each revision runs in one of its own) makes env.py run on it instead of
    opening its own."""
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("script_location", str(HERE))
    if url is not None:
        config.attributes["url"] = url
    if connection is not None:
        config.attributes["connection"] = connection
    return config
