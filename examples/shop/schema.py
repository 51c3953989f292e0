"""The example shop's own tables, in schema `shop`: the orders the order service takes
(examples/shop/orders.py) with its starter outbox, what the participants change, and the
fraud desk's verdicts on large orders (examples/shop/fraud_desk.py).

No table is unique per saga: the barrier (`shop.saga_barrier`, next to these tables), not a
domain constraint, is what keeps a redelivered command from acting twice -- and if it ever
failed, the double effect would show up as data instead of hiding behind a unique violation.
The `effects` ledger has one row per applied effect, so a command whose effect was applied
twice shows up as two rows.
"""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters import starter
from adapters.participant.barrier import Barrier

SCHEMA = "shop"
# The example has no migrations: its data is demo data, so a `shop` schema of another layout
# (left by an older version of the example) is dropped and rebuilt. Change it when a table
# changes; a new table needs no change (`create` adds it), and a layout the previous release
# shares keeps that release's shop from rebuilding the schema under tests/upgrade.
LAYOUT = "example shop, layout 2 (participant barrier)"

metadata = sa.MetaData(schema=SCHEMA)

_Timestamp = sa.DateTime(timezone=True)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("items", JSONB, nullable=False),
    sa.Column("placed_at", _Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("cancel_requested_at", _Timestamp),
)
# Where the order service writes its sagas' starts and cancels, next to its orders.
OUTBOX = starter.OutboxTable(schema=SCHEMA)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("credit", sa.Numeric(12, 2), nullable=False),
    sa.Column("card_ok", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.CheckConstraint("credit >= 0", name="ck_customers_credit_non_negative"),
)

credit_reservations = sa.Table(
    "credit_reservations",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("saga_id", sa.Uuid, nullable=False, index=True),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
    sa.Column("released_at", _Timestamp),
)

stock = sa.Table(
    "stock",
    metadata,
    sa.Column("sku", sa.Text, primary_key=True),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.CheckConstraint("qty >= 0", name="ck_stock_qty_non_negative"),
)

stock_reservations = sa.Table(
    "stock_reservations",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("saga_id", sa.Uuid, nullable=False, index=True),
    sa.Column("lines", JSONB, nullable=False),
    sa.Column("released_at", _Timestamp),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("saga_id", sa.Uuid, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("amount", sa.Numeric(12, 2), nullable=False),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("saga_id", sa.Uuid, nullable=False),
    sa.Column("order_id", sa.Text, nullable=False),
    sa.Column("sent_at", _Timestamp, nullable=False, server_default=sa.func.now()),
)

effects = sa.Table(
    "effects",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("saga_id", sa.Uuid, nullable=False),
    sa.Column("order_id", sa.Text, nullable=False),
    sa.Column("at", _Timestamp, nullable=False, server_default=sa.func.now()),
)

# The fraud desk's verdict on each order above the review threshold, and what became of the
# signal that told the order saga: `sent_at` once the broker confirmed it (null: to be sent,
# again if need be), `refused` the reason when the saga refused it for good.
fraud_reviews = sa.Table(
    "fraud_reviews",
    metadata,
    sa.Column("order_id", sa.Text, primary_key=True),
    sa.Column("approved", sa.Boolean, nullable=False),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("reviewed_at", _Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("sent_at", _Timestamp),
    sa.Column("refused", sa.Text),
)


def barrier(engine: AsyncEngine) -> Barrier:
    """The exactly-once barrier of the shop's services, in the shop's schema."""
    return Barrier(engine, schema=SCHEMA)


async def create(engine: AsyncEngine) -> None:
    """Create the shop's tables, its starter outbox and its barrier unless they exist
    (idempotent; safe when the demo and the shop process both call it)."""
    async with engine.begin() as conn:
        # Serialized: create_all checks, then creates, and two processes could both check.
        await conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"),
            {"name": f"examples.shop:{SCHEMA}"},
        )
        layout = await conn.scalar(
            sa.text(
                "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = :s"
            ),
            {"s": SCHEMA},
        )
        if layout != LAYOUT:
            await conn.execute(sa.schema.DropSchema(SCHEMA, cascade=True, if_exists=True))
            await conn.execute(sa.schema.CreateSchema(SCHEMA))
            await conn.execute(sa.text(f"COMMENT ON SCHEMA {SCHEMA} IS '{LAYOUT}'"))
        await conn.run_sync(metadata.create_all)
        await starter.install(conn, OUTBOX)
    await barrier(engine).install()


async def seed(
    engine: AsyncEngine,
    customers_credit: dict[str, tuple[Decimal, bool]],
    stock_levels: dict[str, int],
) -> None:
    """Insert or reset customers (credit, card_ok) and stock levels."""
    async with engine.begin() as conn:
        for cid, (credit, card_ok) in customers_credit.items():
            await conn.execute(
                insert(customers)
                .values(id=cid, credit=credit, card_ok=card_ok)
                .on_conflict_do_update(
                    index_elements=[customers.c.id], set_={"credit": credit, "card_ok": card_ok}
                )
            )
        for sku, qty in stock_levels.items():
            await conn.execute(
                insert(stock)
                .values(sku=sku, qty=qty)
                .on_conflict_do_update(index_elements=[stock.c.sku], set_={"qty": qty})
            )
