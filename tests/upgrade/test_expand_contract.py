"""Every migration after the rule began is expand-only or says why it contracts
(tests/upgrade/expand_contract.py); the check itself catches each kind of contract step."""

from __future__ import annotations

import pytest

from tests.upgrade.expand_contract import EXPAND_ONLY_AFTER, migrations_after, problems

HEADER = """
from alembic import op
import sqlalchemy as sa

revision: str = "9999"
down_revision = "0009"

"""


def test_every_migration_after_the_baseline_only_expands() -> None:
    found = migrations_after()
    assert [m.revision for m in found] == sorted(m.revision for m in found)
    assert all(m.revision > EXPAND_ONLY_AFTER for m in found)
    assert [p for m in found for p in problems(m.source, m.path.name)] == []


def test_the_baseline_is_a_real_revision() -> None:
    # A typo here would silently exempt (or include) the wrong migrations.
    assert EXPAND_ONLY_AFTER in {m.revision for m in migrations_after("0000")}


EXPANDING = [
    'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
    'op.add_column("t", sa.Column("c", sa.Text, nullable=True))',
    'op.add_column("t", sa.Column("c", sa.Integer, nullable=False, server_default="0"))',
    'op.create_index("ix_t_c", "t", ["c"], postgresql_concurrently=True)',
    'op.alter_column("t", "c", nullable=True)',
    'op.execute("CREATE OR REPLACE VIEW v AS SELECT 1")',
    'op.execute("GRANT SELECT ON t TO saga_app")',
    'op.drop_index("ix_old", table_name="t")',
    'op.drop_constraint("ck_t_c", "t", type_="check")',
]
CONTRACTING = [
    'op.drop_table("t")',
    'op.drop_column("t", "c")',
    'op.rename_table("t", "u")',
    'op.alter_column("t", "c", new_column_name="d")',
    'op.alter_column("t", "c", type_=sa.BigInteger())',
    'op.alter_column("t", "c", nullable=False)',
    'op.add_column("t", sa.Column("c", sa.Text, nullable=False))',
    'op.create_check_constraint("ck", "t", "c > 0")',
    'op.create_unique_constraint("uq", "t", ["c"])',
    'op.create_foreign_key("fk", "t", "u", ["c"], ["id"])',
    'op.execute("ALTER TABLE t DROP COLUMN c")',
    'op.execute("ALTER TABLE t ALTER COLUMN c SET NOT NULL")',
    'op.execute("ALTER TABLE t ALTER COLUMN c TYPE bigint")',
    'op.execute("ALTER TABLE t RENAME COLUMN c TO d")',
    'op.execute("DROP VIEW saga_parked")',
    'op.execute(f"DROP TABLE {name}")',
    "op.execute(SQL)",
]


@pytest.mark.parametrize("statement", EXPANDING)
def test_expanding_operations_pass(statement: str) -> None:
    assert problems(f"{HEADER}def upgrade() -> None:\n    {statement}\n") == []


@pytest.mark.parametrize("statement", CONTRACTING)
def test_contracting_operations_are_named(statement: str) -> None:
    source = (
        f'{HEADER}SQL = "DROP TABLE t"\nname = "t"\n\ndef upgrade() -> None:\n    {statement}\n'
    )
    found = problems(source, "9999_scratch.py")
    assert len(found) == 1, found
    assert found[0].startswith("9999_scratch.py:")


def test_only_upgrade_counts_not_downgrade() -> None:
    downgrade = 'def downgrade() -> None:\n    op.drop_table("t")\n'
    source = f"{HEADER}def upgrade() -> None:\n    pass\n\n{downgrade}"
    assert problems(source) == []


def test_a_declared_contract_step_passes_only_with_a_reason() -> None:
    body = 'def upgrade() -> None:\n    op.drop_column("t", "c")\n'
    reason = 'CONTRACT = "release 0.3 stopped reading t.c; every 0.2 orchestrator is gone"\n'
    assert problems(f"{HEADER}{reason}{body}") == []
    assert problems(f'{HEADER}CONTRACT = "yes"\n{body}') != []
