"""A least-privilege role for the running engine: `saga_app` may read and write the engine's
rows and nothing more — no table, index or view of its own, no ALTER, DROP or TRUNCATE — so
a compromised or buggy orchestrator cannot destroy the schema (issue 8, docs/security.md).

Migrations run as the owner of the schema; `saga run`, `saga worker` and the API connect as
a login role that is a member of `saga_app`:

    CREATE ROLE saga_orchestrator LOGIN PASSWORD '...' IN ROLE saga_app;

`saga_app` itself is NOLOGIN: it holds privileges, not credentials, and a migration is no
place for a password. Roles belong to the whole server, not to one database, so it is
created only if missing (tests migrate many databases on one server, some at the same time);
the grants are per database. A later migration that adds a table, view or sequence grants
on it too: tests/security/test_least_privilege.py checks every one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "saga_app"
TABLES = (
    "saga_definitions",
    "saga_instances",
    "saga_steps",
    "saga_history",
    "outbox",
    "inbox",
    "saga_locks",
    "saga_lock_waiters",
)
SEQUENCES = ("inbox_id_seq", "outbox_id_seq", "saga_lock_waiters_id_seq")
VIEWS = (
    "saga_overview",
    "saga_parked",
    "saga_stuck",
    "saga_step_durations",
    "saga_step_latency",
    "saga_outbox_lag",
)


def create_role(name: str) -> str:
    """SQL creating the NOLOGIN role `name` unless it exists. Two databases migrating at once
    both see it missing; the loser of the race gets duplicate_object (or unique_violation on
    the catalog), which means it is there now."""
    return f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN
        CREATE ROLE {name} NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(create_role(ROLE))
    # PostgreSQL 15 revokes this by default; older servers let every role create tables in
    # `public`, which would give the app role DDL after all.
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute(f"GRANT USAGE ON SCHEMA public TO {ROLE}")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(TABLES)} TO {ROLE}")
    op.execute(f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE {', '.join(SEQUENCES)} TO {ROLE}")
    op.execute(f"GRANT SELECT ON {', '.join(VIEWS)} TO {ROLE}")
    # The app may see which revision the schema is at, not change it.
    op.execute(f"GRANT SELECT ON alembic_version TO {ROLE}")


def downgrade() -> None:
    # The role stays: other databases on the server may use it. Its rights here go.
    # CREATE on `public` stays revoked: giving it back to every role would be a hole.
    objects = ", ".join((*TABLES, *VIEWS, "alembic_version"))
    op.execute(f"REVOKE ALL ON {objects} FROM {ROLE}")
    op.execute(f"REVOKE ALL ON SEQUENCE {', '.join(SEQUENCES)} FROM {ROLE}")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {ROLE}")
