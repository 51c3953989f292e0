"""Indexes for the lookups that scanned every saga once the table held a million finished
ones (bench/GROWTH.md): a saga by its start key alone (`saga status <key>`, the API's
by-key lookup without a saga name, a cancel by key), 121 ms -> 0.04 ms; and the newest
sagas first with no filter (the dashboard's list, `GET /api/sagas`), 282 ms -> 0.09 ms.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_saga_instances_key"), "saga_instances", ["key"])
    op.create_index(op.f("ix_saga_instances_updated_at_id"), "saga_instances", ["updated_at", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_saga_instances_updated_at_id"), table_name="saga_instances")
    op.drop_index(op.f("ix_saga_instances_key"), table_name="saga_instances")
