"""Initial schema: definitions, instances, steps, append-only history, outbox, inbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A revision is a snapshot: the status lists are spelled out, not imported from the code.
SAGA_STATUSES = (
    "'running', 'compensating', 'completed', 'compensated', 'cancelled', 'failed', 'paused'"
)
STEP_STATUSES = (
    "'pending', 'running', 'succeeded', 'failed', 'compensating', 'compensated', 'skipped'"
)

# History is an audit trail: nobody rewrites it. Retention will delete old rows with
# `SET LOCAL saga.allow_history_delete = 'on'`; TRUNCATE needs the same setting.
HISTORY_GUARD = """
CREATE FUNCTION saga_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE')
       AND current_setting('saga.allow_history_delete', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'saga_history is append-only: % refused', TG_OP
        USING HINT = 'deleting old history needs SET LOCAL saga.allow_history_delete = on';
END
$$;
CREATE TRIGGER saga_history_append_only
    BEFORE UPDATE OR DELETE ON saga_history
    FOR EACH ROW EXECUTE FUNCTION saga_history_append_only();
CREATE TRIGGER saga_history_no_truncate
    BEFORE TRUNCATE ON saga_history
    FOR EACH STATEMENT EXECUTE FUNCTION saga_history_append_only();
"""


def _json() -> postgresql.JSONB:
    return postgresql.JSONB(none_as_null=True, astext_type=sa.Text())


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "saga_definitions",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("document", _json(), nullable=False),
        sa.Column(
            "registered_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_saga_definitions")),
    )
    op.create_table(
        "saga_instances",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("input", _json(), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("next_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(f"status IN ({SAGA_STATUSES})", name=op.f("ck_saga_instances_status")),
        sa.CheckConstraint("revision >= 0", name=op.f("ck_saga_instances_revision")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saga_instances")),
        sa.UniqueConstraint("name", "key", name=op.f("uq_saga_instances_name_key")),
    )
    op.create_index(
        "ix_saga_instances_next_due_at",
        "saga_instances",
        ["next_due_at"],
        postgresql_where=sa.text("next_due_at IS NOT NULL"),
    )
    op.create_index(
        "ix_saga_instances_status_updated_at", "saga_instances", ["status", "updated_at"]
    )
    op.create_table(
        "saga_steps",
        sa.Column("saga_id", sa.Uuid(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("compensation_attempt", sa.Integer(), nullable=False),
        sa.Column("command_id", sa.Uuid(), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.CheckConstraint(f"status IN ({STEP_STATUSES})", name=op.f("ck_saga_steps_status")),
        sa.CheckConstraint(
            "attempt >= 0 AND compensation_attempt >= 0", name=op.f("ck_saga_steps_attempts")
        ),
        sa.ForeignKeyConstraint(
            ["saga_id"],
            ["saga_instances.id"],
            name=op.f("fk_saga_steps_saga_id_saga_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("saga_id", "idx", name=op.f("pk_saga_steps")),
    )
    op.create_table(
        "saga_history",
        sa.Column("saga_id", sa.Uuid(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column("event", sa.Text(), nullable=False),
        sa.Column("step", sa.Text(), nullable=True),
        sa.Column("detail", _json(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["saga_id"],
            ["saga_instances.id"],
            name=op.f("fk_saga_history_saga_id_saga_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("saga_id", "seq", name=op.f("pk_saga_history")),
    )
    op.execute(HISTORY_GUARD)
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("exchange", sa.Text(), nullable=False),
        sa.Column("routing_key", sa.Text(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("reply_to", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"])
    op.create_table(
        "inbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("saga", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.CheckConstraint("kind IN ('cancel')", name=op.f("ck_inbox_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbox")),
    )
    op.create_index("ix_inbox_key", "inbox", ["key"])


def downgrade() -> None:
    op.drop_table("inbox")
    op.drop_table("outbox")
    op.drop_table("saga_history")  # drops its triggers with it
    op.execute("DROP FUNCTION saga_history_append_only()")
    op.drop_table("saga_steps")
    op.drop_table("saga_instances")
    op.drop_table("saga_definitions")
