"""The schema as SQLAlchemy Core tables. Alembic revisions are the source of truth in
production; `alembic check` (tests/integration/test_migrations.py) proves the two agree."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from orchestrator.state import SagaStatus, StepStatus

# Predictable constraint names: migrations can refer to them and autogenerate diffs cleanly.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# SQL NULL for None: a JSON `null` would make `IS NULL` filters lie.
_Json = JSONB(none_as_null=True)
_Timestamp = sa.DateTime(timezone=True)


def _one_of(column: str, values: list[str]) -> sa.CheckConstraint:
    return sa.CheckConstraint(sa.column(column).in_(values), name=column)


saga_definitions = sa.Table(
    "saga_definitions",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("document", _Json, nullable=False),
    sa.Column("registered_at", _Timestamp, nullable=False, server_default=sa.func.now()),
)

saga_instances = sa.Table(
    "saga_instances",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("input", _Json, nullable=False),
    sa.Column("cancel_reason", sa.Text),
    sa.Column("error", _Json),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("next_due_at", _Timestamp),
    sa.Column("created_at", _Timestamp, nullable=False),
    sa.Column("updated_at", _Timestamp, nullable=False),
    sa.Column("deadline_at", _Timestamp),
    sa.Column("compensation_deadline_at", _Timestamp),
    # Where a paused saga resumes, or a parked one continues on an operator's retry.
    sa.Column("resume_status", sa.Text),
    sa.UniqueConstraint("name", "key"),
    _one_of("status", [s.value for s in SagaStatus]),
    sa.CheckConstraint(
        "resume_status IN ('running', 'compensating')"
        " OR (resume_status IS NULL AND status <> 'paused')",
        name="resume_status",
    ),
    sa.CheckConstraint("revision >= 0", name="revision"),
)
sa.Index(
    "ix_saga_instances_next_due_at",
    saga_instances.c.next_due_at,
    postgresql_where=saga_instances.c.next_due_at.is_not(None),
)
sa.Index(
    "ix_saga_instances_status_updated_at", saga_instances.c.status, saga_instances.c.updated_at
)

saga_steps = sa.Table(
    "saga_steps",
    metadata,
    sa.Column(
        "saga_id", sa.Uuid, sa.ForeignKey(saga_instances.c.id, ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("idx", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("compensation_attempt", sa.Integer, nullable=False),
    sa.Column("command_id", sa.Uuid),
    sa.Column("due_at", _Timestamp),
    sa.Column("result", _Json),
    sa.Column("error", _Json),
    sa.Column("started_at", _Timestamp),
    sa.Column("progress", _Json),
    sa.Column("retry_base", sa.Integer, nullable=False, server_default="0"),
    # A map step's item rows: the item's number, and the item its command carries.
    sa.Column("item", sa.Integer),
    sa.Column("payload", _Json),
    _one_of("status", [s.value for s in StepStatus]),
    sa.CheckConstraint("attempt >= 0 AND compensation_attempt >= 0", name="attempts"),
    sa.CheckConstraint(
        "retry_base >= 0 AND retry_base <= GREATEST(attempt, compensation_attempt)",
        name="retry_base",
    ),
    sa.CheckConstraint("item >= 0", name="item"),
)

# Append-only: a trigger installed by the migration refuses UPDATE and DELETE. Deleting a saga
# therefore needs `saga.allow_history_delete` on, which is what retention will set.
saga_history = sa.Table(
    "saga_history",
    metadata,
    sa.Column(
        "saga_id", sa.Uuid, sa.ForeignKey(saga_instances.c.id, ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("at", _Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Column("event", sa.Text, nullable=False),
    sa.Column("step", sa.Text),
    sa.Column("detail", _Json),
    sa.Column("actor", sa.Text, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("exchange", sa.Text, nullable=False),
    sa.Column("routing_key", sa.Text, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("reply_to", sa.Text),
    sa.Column("created_at", _Timestamp, nullable=False, server_default=sa.func.now()),
    sa.Index("ix_outbox_created_at", "created_at"),
)

# Cancels that arrived before their saga started; the start consumes them.
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("saga", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("received_at", _Timestamp, nullable=False, server_default=sa.func.now()),
    _one_of("kind", ["cancel"]),
    sa.Index("ix_inbox_key", "key"),
)
