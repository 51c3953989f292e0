"""A step's schedule-to-close budget: `saga_steps.close_at`, the moment past which no attempt
of the step runs and no retry is scheduled (docs/time-limits.md). Null for steps without one,
which every step written before this revision is.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("saga_steps", sa.Column("close_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("saga_steps", "close_at")
