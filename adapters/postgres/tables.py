"""The schema as SQLAlchemy Core tables. Alembic revisions are the source of truth in
production; `alembic check` (tests/integration/test_migrations.py) proves the two agree."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from orchestrator.search_fields import SearchKind
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
    # A child saga's parent step (orchestrator.messages.ParentRef), answered when it ends.
    sa.Column("parent_id", sa.Uuid),
    sa.Column("parent", _Json),
    # When the saga entered its current status.
    sa.Column("status_since", _Timestamp),
    # The W3C trace context of its start message (traceparent, tracestate): set at start.
    sa.Column("trace", _Json),
    # What the definition's output= made of the completed saga (null without one).
    sa.Column("output", _Json),
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
    "ix_saga_instances_status_status_since",
    saga_instances.c.status,
    saga_instances.c.status_since,
)
sa.Index(
    "ix_saga_instances_parent_id",
    saga_instances.c.parent_id,
    postgresql_where=saga_instances.c.parent_id.is_not(None),
)
sa.Index(
    "ix_saga_instances_status_updated_at", saga_instances.c.status, saga_instances.c.updated_at
)
# A start key alone (no saga name): the (name, key) unique index has key second.
sa.Index("ix_saga_instances_key", saga_instances.c.key)
# Newest first with no filter: the dashboard's list.
sa.Index("ix_saga_instances_updated_at_id", saga_instances.c.updated_at, saga_instances.c.id)

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
    sa.Column("dispatched_at", _Timestamp),
    sa.Column("progress", _Json),
    sa.Column("retry_base", sa.Integer, nullable=False, server_default="0"),
    # A map step's item rows: the item's number, and the item its command carries.
    sa.Column("item", sa.Integer),
    # An item row's item; a child step's input; what a step's payload= built.
    sa.Column("payload", _Json),
    # The end of the step's schedule-to-close budget (orchestrator/time_limits.py).
    sa.Column("close_at", _Timestamp),
    _one_of("status", [s.value for s in StepStatus]),
    sa.CheckConstraint("attempt >= 0 AND compensation_attempt >= 0", name="attempts"),
    sa.CheckConstraint(
        "retry_base >= 0 AND retry_base <= GREATEST(attempt, compensation_attempt)",
        name="retry_base",
    ),
    sa.CheckConstraint("item >= 0", name="item"),
)

# Search fields (orchestrator/search_fields.py): one row per field a saga has a value for,
# the value in the column of its kind (the others null). Written when the saga starts (from
# its input) and completes (from its output). An index per kind serves = and ranges on one
# field, with saga_id in it so a filter is answered from the index alone; text compares in
# the "C" collation, by code point, as the in-memory store compares strings.
saga_search = sa.Table(
    "saga_search",
    metadata,
    sa.Column(
        "saga_id", sa.Uuid, sa.ForeignKey(saga_instances.c.id, ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("text_value", sa.Text(collation="C")),
    sa.Column("num_value", sa.Numeric),
    sa.Column("bool_value", sa.Boolean),
    sa.Column("time_value", _Timestamp),
    sa.CheckConstraint(
        "num_nonnulls(text_value, num_value, bool_value, time_value) = 1", name="one_value"
    ),
)
# The column each kind of search value goes in.
SEARCH_COLUMNS = {
    SearchKind.TEXT: "text_value",
    SearchKind.NUMBER: "num_value",
    SearchKind.BOOL: "bool_value",
    SearchKind.TIME: "time_value",
}
for _column in SEARCH_COLUMNS.values():
    sa.Index(
        f"ix_saga_search_name_{_column}",
        saga_search.c.name,
        saga_search.c[_column],
        saga_search.c.saga_id,
        postgresql_where=saga_search.c[_column].is_not(None),
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
    # Message headers to publish with it (the saga's trace context); NULL for none.
    sa.Column("headers", _Json),
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

# Semantic locks (orchestrator/locks.py): one row per resource a saga holds. The saga's row
# may come later in the same transaction (a start takes its resources before it inserts
# itself), hence the deferred foreign key.
saga_locks = sa.Table(
    "saga_locks",
    metadata,
    sa.Column("resource", sa.Text, primary_key=True),
    sa.Column(
        "saga_id",
        sa.Uuid,
        sa.ForeignKey(
            saga_instances.c.id, ondelete="CASCADE", deferrable=True, initially="DEFERRED"
        ),
        nullable=False,
    ),
    sa.Column("saga", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("acquired_at", _Timestamp, nullable=False),
    sa.Index("ix_saga_locks_saga_id", "saga_id"),
)

# Starts waiting for held resources, served in `id` order (FIFO). A start that is rejected
# when its wait runs out has `expires_at`; one that waits as long as it takes has none.
saga_lock_waiters = sa.Table(
    "saga_lock_waiters",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("saga", sa.Text, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("input", _Json, nullable=False),
    sa.Column("resources", ARRAY(sa.Text), nullable=False),
    sa.Column("enqueued_at", _Timestamp, nullable=False),
    sa.Column("expires_at", _Timestamp),
    # A child saga's parent step (orchestrator.messages.ParentRef).
    sa.Column("parent", _Json),
    # One waiting start per (saga, key): a duplicate start finds it instead of queueing twice.
    sa.UniqueConstraint("saga", "key"),
    sa.CheckConstraint("cardinality(resources) > 0", name="resources"),
    # "Who waits for this resource" is an array overlap: a GIN index serves it.
    sa.Index("ix_saga_lock_waiters_resources", "resources", postgresql_using="gin"),
    sa.Index(
        "ix_saga_lock_waiters_expires_at",
        "expires_at",
        postgresql_where=sa.text("expires_at IS NOT NULL"),
    ),
    sa.Index("ix_saga_lock_waiters_key", "key"),
)
