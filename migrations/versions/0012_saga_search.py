"""Search fields: `saga_search`, the business fields a definition declares
(`Saga(..., search=(...))`), one row per saga and field, the value typed in the column of its
kind, with an index per kind for equality and ranges on one field (README, "Search fields").
Expand only: a new table. The previous release neither writes nor reads it; its prune deletes
a saga's rows with the saga (ON DELETE CASCADE).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "saga_app"  # 0009's least-privilege role
VALUES = ("text_value", "num_value", "bool_value", "time_value")


def upgrade() -> None:
    op.create_table(
        "saga_search",
        sa.Column("saga_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("text_value", sa.Text(collation="C"), nullable=True),
        sa.Column("num_value", sa.Numeric(), nullable=True),
        sa.Column("bool_value", sa.Boolean(), nullable=True),
        sa.Column("time_value", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "num_nonnulls(text_value, num_value, bool_value, time_value) = 1",
            name=op.f("ck_saga_search_one_value"),
        ),
        sa.ForeignKeyConstraint(
            ["saga_id"],
            ["saga_instances.id"],
            name=op.f("fk_saga_search_saga_id_saga_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("saga_id", "name", name=op.f("pk_saga_search")),
    )
    for column in VALUES:
        op.create_index(
            op.f(f"ix_saga_search_name_{column}"),
            "saga_search",
            ["name", column, "saga_id"],
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON saga_search TO {ROLE}")


def downgrade() -> None:
    op.drop_table("saga_search")
