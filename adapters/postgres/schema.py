"""Whether a database holds the schema this release needs: every process that uses the
database checks before it does anything else, so an un-migrated database (or one a release
behind) is one line saying to run `saga migrate`, not a failed statement deep inside.

A database AHEAD of this release (a revision it does not know) is accepted: during a rolling
upgrade the previous release's processes run on the new schema, which only expands
(migrations/__init__.py)."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from migrations import alembic_config


class SchemaNotReady(Exception):
    """The database has no saga schema, or an older one than this release's: the message
    says which and to run `saga migrate`."""


def scripts() -> ScriptDirectory:
    """This release's revisions (migrations/versions)."""
    return ScriptDirectory.from_config(alembic_config())


def revision_of(conn: Connection) -> str | None:
    """The revision the connection's database is at; None when it has no schema."""
    return MigrationContext.configure(conn).get_current_revision()


async def require_schema(db: AsyncEngine) -> None:
    """Raise SchemaNotReady unless `db` is at this release's head revision (or ahead)."""
    async with db.connect() as conn:
        current = await conn.run_sync(revision_of)
    revisions = scripts()
    needed = revisions.get_current_head()
    where = f"the database at {db.url.render_as_string(hide_password=True)}"
    if current is None:
        raise SchemaNotReady(f"{where} has no saga schema: run `saga migrate`")
    known = {script.revision for script in revisions.walk_revisions()}
    if current != needed and current in known:
        raise SchemaNotReady(
            f"{where} is at revision {current}, this release needs {needed}: run `saga migrate`"
        )
