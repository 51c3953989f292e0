"""Child sagas: the parent step a child saga answers when it ends. `parent_id` is indexed
so operators can list a saga's children; `parent` holds the whole reference (step, command
id, and whether it answers the action or the parent's undo).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("saga_instances", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.add_column(
        "saga_instances",
        sa.Column(
            "parent", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True
        ),
    )
    op.create_index(
        op.f("ix_saga_instances_parent_id"),
        "saga_instances",
        ["parent_id"],
        postgresql_where=sa.text("parent_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_saga_instances_parent_id"), table_name="saga_instances")
    op.drop_column("saga_instances", "parent")
    op.drop_column("saga_instances", "parent_id")
