"""Operators' time questions: when a saga entered its current status (`status_since`, so
"compensating for more than 10 minutes" is one indexed query), and when a step's command
was sent (`dispatched_at`, from which step latency is measured).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.add_column("saga_instances", sa.Column("status_since", timestamp, nullable=True))
    # Existing sagas: the last transition is the best known lower bound.
    op.execute("UPDATE saga_instances SET status_since = updated_at")
    op.create_index(
        op.f("ix_saga_instances_status_status_since"),
        "saga_instances",
        ["status", "status_since"],
    )
    op.add_column("saga_steps", sa.Column("dispatched_at", timestamp, nullable=True))


def downgrade() -> None:
    op.drop_column("saga_steps", "dispatched_at")
    op.drop_index(op.f("ix_saga_instances_status_status_since"), table_name="saga_instances")
    op.drop_column("saga_instances", "status_since")
