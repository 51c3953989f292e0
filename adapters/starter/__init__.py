"""The starter: what a service that starts sagas imports, so that its business write and the
saga's start commit together. It needs the wire protocol (`orchestrator.messages`) and
nothing of the engine (CI checks it: pyproject.toml, `[tool.importlinter]`).

    async with engine.begin() as conn:
        await conn.execute(insert(orders).values(...))
        await starter.start(conn, "order", key=f"order-{order_id}", input={...})

    async with starter.relaying(engine, amqp_url=..., prefix=...):
        ...  # the service runs; the relay publishes what was committed

- `install(conn, table=OUTBOX)`: the outbox table (`OutboxTable`: name, schema; its DDL in
  `OutboxTable.ddl()` and docs/starter.md, for services in other languages);
- `start(conn, saga, *, key, input, ...)`, `cancel(conn, *, key, ...)`: one row each, in the
  caller's transaction (an SQLAlchemy or a psycopg AsyncConnection); never a commit;
- `relaying(...)`: the relay as a background task; `saga relay` runs it as a process.

docs/starter.md has the rest: failure modes, metrics, and the rejection event to listen to.
"""

from adapters.starter.metrics import RelayMetrics
from adapters.starter.relay import Relay, relaying
from adapters.starter.table import OUTBOX, OutboxTable, install
from adapters.starter.writes import Definition, InvalidRequest, cancel, start

__all__ = [
    "OUTBOX",
    "Definition",
    "InvalidRequest",
    "OutboxTable",
    "Relay",
    "RelayMetrics",
    "cancel",
    "install",
    "relaying",
    "start",
]
