"""Many rows in one statement whose text does not depend on how many: `INSERT … SELECT FROM
unnest(:column_arrays)`. psycopg parses and prepares such a statement once; a multi-row
`VALUES` list (SQLAlchemy's insertmanyvalues) is a new text for every row count, parsed
again each time, and that parsing showed up in the orchestrator's profile under load."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB


@dataclass(frozen=True)
class BulkInsert:
    statement: str  # psycopg text (adapters/postgres/driver.py)
    columns: tuple[str, ...]
    json_columns: frozenset[str]

    def params(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """One array per column; JSON values go as text and are cast in the statement."""
        return {
            name: [json_text(row[name]) if name in self.json_columns else row[name] for row in rows]
            for name in self.columns
        }


def bulk_insert(table: sa.Table, columns: Sequence[str], suffix: str = "") -> BulkInsert:
    """`suffix`: what follows the SELECT (`ON CONFLICT …`, `RETURNING …`)."""
    json_columns = frozenset(c for c in columns if isinstance(table.c[c].type, JSONB))
    arrays = ", ".join(
        f"CAST(%({c})s AS {'text' if c in json_columns else sql_type(table.c[c])}[])"
        for c in columns
    )
    selected = ", ".join(
        f"CAST(v.{c} AS jsonb)" if c in json_columns else f"v.{c}" for c in columns
    )
    text = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"SELECT {selected} FROM unnest({arrays}) AS v({', '.join(columns)}) {suffix}"
    )
    return BulkInsert(text, tuple(columns), json_columns)


def sql_type(column: sa.Column[Any]) -> str:
    kind = column.type
    if isinstance(kind, sa.Uuid):
        return "uuid"
    if isinstance(kind, sa.DateTime):
        return "timestamptz"
    if isinstance(kind, sa.BigInteger):
        return "bigint"
    if isinstance(kind, sa.Integer):
        return "int"
    if isinstance(kind, sa.LargeBinary):
        return "bytea"
    if isinstance(kind, sa.Text):
        return "text"
    raise TypeError(f"bulk_insert: no array type for column {column.name} ({kind!r})")


def json_text(value: Any) -> str | None:
    # none_as_null, as the tables declare: None is SQL NULL, not the JSON null.
    return None if value is None else json.dumps(value)
