"""Semantic locks: the resources sagas hold (`saga_locks`) and the starts waiting for them
(`saga_lock_waiters`, served oldest first).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.create_table(
        "saga_locks",
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("saga_id", sa.Uuid(), nullable=False),
        sa.Column("saga", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("acquired_at", timestamp, nullable=False),
        sa.PrimaryKeyConstraint("resource", name=op.f("pk_saga_locks")),
        # Deferred: a start takes its resources before it inserts its saga row.
        sa.ForeignKeyConstraint(
            ["saga_id"],
            ["saga_instances.id"],
            name=op.f("fk_saga_locks_saga_id_saga_instances"),
            ondelete="CASCADE",
            deferrable=True,
            initially="DEFERRED",
        ),
    )
    op.create_index(op.f("ix_saga_locks_saga_id"), "saga_locks", ["saga_id"])
    op.create_table(
        "saga_lock_waiters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("saga", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column(
            "input", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=False
        ),
        sa.Column("resources", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("enqueued_at", timestamp, nullable=False),
        sa.Column("expires_at", timestamp, nullable=True),
        sa.Column(
            "parent", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saga_lock_waiters")),
        sa.UniqueConstraint("saga", "key", name=op.f("uq_saga_lock_waiters_saga_key")),
        sa.CheckConstraint(
            "cardinality(resources) > 0", name=op.f("ck_saga_lock_waiters_resources")
        ),
    )
    op.create_index(
        op.f("ix_saga_lock_waiters_resources"),
        "saga_lock_waiters",
        ["resources"],
        postgresql_using="gin",
    )
    op.create_index(
        op.f("ix_saga_lock_waiters_expires_at"),
        "saga_lock_waiters",
        ["expires_at"],
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    )
    op.create_index(op.f("ix_saga_lock_waiters_key"), "saga_lock_waiters", ["key"])


def downgrade() -> None:
    op.drop_table("saga_lock_waiters")
    op.drop_table("saga_locks")
