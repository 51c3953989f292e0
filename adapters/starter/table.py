"""The starter's outbox table: its DDL as SQL text, and `install`.

One row is one start or cancel waiting for the relay. `id` is the order rows are published in
(per key: the relay takes only the oldest row of each key); `body` is the exact wire body
(StartSaga or CancelSaga of orchestrator/messages.py) and `message_id` the AMQP message id,
fixed when the row is written so that a republish after a crash carries the same one.
`created_at` feeds the relay's oldest-row-age gauge; `saga` is there for people reading the
table (it is null for a cancel by key alone). A statement-level trigger notifies the relay on
commit, whoever writes the rows: this library or plain SQL from any language.

The statements are the documentation too (docs/starter.md shows them for the default table).
Names are plain lowercase identifiers, so they need no quoting anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.starter.connections import Connection, execute

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
# One lock for every install: they may share a schema, and CREATE ... IF NOT EXISTS is not
# safe against a concurrent creator (both pass the check, one fails on the unique catalog).
_INSTALL_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('adapters.starter.install', 0))"


@dataclass(frozen=True)
class OutboxTable:
    """Where the outbox lives: `name` in `schema` (None: the connection's search_path)."""

    name: str = "saga_starter_outbox"
    schema: str | None = None

    def __post_init__(self) -> None:
        for what, value in (("table", self.name), ("schema", self.schema)):
            if value is not None and not _IDENTIFIER.match(value):
                raise ValueError(
                    f"{what} name {value!r} is not a plain identifier: lowercase letters, "
                    "digits and '_', starting with a letter or '_', at most 48 characters"
                )

    def __str__(self) -> str:
        return self.qualified

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel the table's trigger notifies on commit."""
        return self.qualified

    def ddl(self) -> list[str]:
        """The statements that create the table, its index and its notify trigger; each is
        idempotent (PostgreSQL 14 or later)."""
        t, notify = self.qualified, f"{self.qualified}_notify"
        schema = [f"CREATE SCHEMA IF NOT EXISTS {self.schema}"] if self.schema else []
        return [
            *schema,
            f"""CREATE TABLE IF NOT EXISTS {t} (
    id          bigserial   PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    kind        text        NOT NULL CHECK (kind IN ('start', 'cancel')),
    key         text        NOT NULL,
    saga        text,
    body        jsonb       NOT NULL,
    message_id  text        NOT NULL DEFAULT gen_random_uuid()::text,
    headers     jsonb
)""",
            f"CREATE INDEX IF NOT EXISTS {self.name}_key_id ON {t} (key, id)",
            f"""CREATE OR REPLACE FUNCTION {notify}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{self.channel}', '');
    RETURN NULL;
END $$""",
            f"""CREATE OR REPLACE TRIGGER {self.name}_notify
    AFTER INSERT ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION {notify}()""",
        ]


OUTBOX = OutboxTable()


async def install(conn: Connection, table: OutboxTable = OUTBOX) -> None:
    """Create the outbox table (and its schema, index and trigger) unless they exist, in the
    caller's transaction: commit it (or run this in a migration of your own, with the
    statements of `table.ddl()`). Safe when several processes install at once."""
    await execute(conn, _INSTALL_LOCK)
    for statement in table.ddl():
        await execute(conn, statement)
