"""Observability: the trace context a saga carries (`saga_instances.trace`) and the headers
an outbox message is published with (`outbox.headers`), and SQL views for operators' ad-hoc
questions (docs/sql-views.md): saga_overview, saga_stuck, saga_parked, saga_step_durations,
saga_step_latency, saga_outbox_lag.

The views are not in adapters/postgres/tables.py: `alembic check` compares tables only, and
nothing in the code reads them. Each is created with CREATE OR REPLACE so a later revision
can redefine one by appending columns; a view that must change shape is dropped and created.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Minutes since a moment, two decimals: `minutes_in_status > 10` reads as the question does.
_MINUTES_SINCE = "round((extract(epoch FROM now() - {0}) / 60)::numeric, 2)"
_IN_STATUS_SINCE = "coalesce(i.status_since, i.updated_at)"

# In creation order: later views read earlier ones.
VIEWS: tuple[tuple[str, str], ...] = (
    (
        "saga_overview",
        f"""
        SELECT
            i.id AS saga_id,
            i.name AS saga,
            i.version,
            i.key,
            i.status,
            {_IN_STATUS_SINCE} AS status_since,
            i.created_at,
            i.updated_at,
            now() - i.created_at AS age,
            now() - {_IN_STATUS_SINCE} AS time_in_status,
            {_MINUTES_SINCE.format(_IN_STATUS_SINCE)} AS minutes_in_status,
            ARRAY(
                SELECT s.name FROM saga_steps s
                WHERE s.saga_id = i.id AND s.status IN ('running', 'compensating')
                ORDER BY s.idx
            ) AS current_steps,
            i.error ->> 'type' AS error_type,
            i.error ->> 'step' AS error_step,
            i.error ->> 'message' AS error_message,
            i.next_due_at,
            i.parent_id,
            split_part(i.trace ->> 'traceparent', '-', 2) AS trace_id
        FROM saga_instances i
        """,
    ),
    (
        "saga_stuck",
        """
        SELECT
            saga_id, saga, version, key, status, status_since, time_in_status,
            minutes_in_status, current_steps,
            next_due_at,
            -- A timer that should have fired already: no orchestrator is sweeping timers.
            coalesce(next_due_at < now(), false) AS timer_overdue,
            error_type, trace_id
        FROM saga_overview
        WHERE status IN ('running', 'compensating')
        """,
    ),
    (
        "saga_parked",
        f"""
        SELECT
            i.id AS saga_id,
            i.name AS saga,
            i.version,
            i.key,
            {_IN_STATUS_SINCE} AS parked_since,
            {_MINUTES_SINCE.format(_IN_STATUS_SINCE)} AS minutes_parked,
            i.error ->> 'type' AS error_type,
            i.error ->> 'step' AS error_step,
            i.error ->> 'message' AS error_message,
            i.resume_status AS continues_as,
            ARRAY(
                SELECT s.name FROM saga_steps s
                WHERE s.saga_id = i.id AND s.error IS NOT NULL
                    AND s.status IN ('failed', 'compensating')
                ORDER BY s.idx
            ) AS parked_steps,
            split_part(i.trace ->> 'traceparent', '-', 2) AS trace_id
        FROM saga_instances i
        WHERE i.status = 'failed'
        """,
    ),
    (
        "saga_step_durations",
        r"""
        SELECT
            h.saga_id,
            i.name AS saga,
            i.version,
            regexp_replace(h.step, '\[[0-9]+\]$', '') AS step,
            h.step AS step_instance,
            CASE h.event WHEN 'step_succeeded' THEN 'action' ELSE 'compensation' END AS kind,
            (h.detail ->> 'attempt')::integer AS attempt,
            (h.detail ->> 'seconds')::double precision AS seconds,
            h.at
        FROM saga_history h
        JOIN saga_instances i ON i.id = h.saga_id
        WHERE h.event IN ('step_succeeded', 'step_compensated')
            AND h.detail ->> 'seconds' IS NOT NULL
        """,
    ),
    (
        "saga_step_latency",
        """
        SELECT
            saga,
            step,
            kind,
            count(*) AS count,
            round(avg(seconds)::numeric, 3) AS avg_seconds,
            round((percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds))::numeric, 3)
                AS p50_seconds,
            round((percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds))::numeric, 3)
                AS p95_seconds,
            round(max(seconds)::numeric, 3) AS max_seconds,
            max(at) AS last_at
        FROM saga_step_durations
        GROUP BY saga, step, kind
        """,
    ),
    (
        "saga_outbox_lag",
        """
        SELECT
            count(*) AS messages,
            min(created_at) AS oldest_at,
            coalesce(extract(epoch FROM now() - min(created_at)), 0)::double precision
                AS lag_seconds
        FROM outbox
        """,
    ),
)


def upgrade() -> None:
    json = postgresql.JSONB(none_as_null=True, astext_type=sa.Text())
    op.add_column("saga_instances", sa.Column("trace", json, nullable=True))
    op.add_column("outbox", sa.Column("headers", json, nullable=True))
    for name, query in VIEWS:
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {query}")


def downgrade() -> None:
    for name, _query in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_column("outbox", "headers")
    op.drop_column("saga_instances", "trace")
