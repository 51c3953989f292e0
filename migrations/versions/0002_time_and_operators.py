"""Time and operators: saga deadlines, where a paused or parked saga resumes, and per step
when its participant was first heard from, its last heartbeat's progress, and the attempt
an operator's retry counts from.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    timestamp = sa.DateTime(timezone=True)
    op.add_column("saga_instances", sa.Column("deadline_at", timestamp, nullable=True))
    op.add_column("saga_instances", sa.Column("compensation_deadline_at", timestamp, nullable=True))
    op.add_column("saga_instances", sa.Column("resume_status", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_saga_instances_resume_status"),
        "saga_instances",
        "resume_status IN ('running', 'compensating')"
        " OR (resume_status IS NULL AND status <> 'paused')",
    )
    op.add_column("saga_steps", sa.Column("started_at", timestamp, nullable=True))
    op.add_column(
        "saga_steps",
        sa.Column(
            "progress", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True
        ),
    )
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "saga_steps",
        sa.Column("retry_base", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_saga_steps_retry_base"),
        "saga_steps",
        "retry_base >= 0 AND retry_base <= GREATEST(attempt, compensation_attempt)",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_saga_steps_retry_base"), "saga_steps", type_="check")
    op.drop_column("saga_steps", "retry_base")
    op.drop_column("saga_steps", "progress")
    op.drop_column("saga_steps", "started_at")
    op.drop_constraint(op.f("ck_saga_instances_resume_status"), "saga_instances", type_="check")
    op.drop_column("saga_instances", "resume_status")
    op.drop_column("saga_instances", "compensation_deadline_at")
    op.drop_column("saga_instances", "deadline_at")
