"""Dynamic fan-out: a map step adds one step row per item at run time. `item` numbers the
row within its map step (NULL for a step of the definition) and `payload` holds the item
the row's command carries.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("saga_steps", sa.Column("item", sa.Integer(), nullable=True))
    op.add_column(
        "saga_steps",
        sa.Column(
            "payload", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True
        ),
    )
    op.create_check_constraint(op.f("ck_saga_steps_item"), "saga_steps", "item >= 0")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_saga_steps_item"), "saga_steps", type_="check")
    op.drop_column("saga_steps", "payload")
    op.drop_column("saga_steps", "item")
