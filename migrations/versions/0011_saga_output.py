"""A saga's output: `saga_instances.output`, what the definition's `output=` made of the
completed saga (docs: README, "Passing data between steps"). Null for sagas without one,
which every saga written before this revision is.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("saga_instances", sa.Column("output", JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column("saga_instances", "output")
