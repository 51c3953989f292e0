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
    table: sa.Table
    columns: tuple[str, ...]
    prefix: str

    def params(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
        return column_arrays(self.table, rows, self.columns, self.prefix)


def bulk_insert(
    table: sa.Table, columns: Sequence[str], suffix: str = "", *, prefix: str = ""
) -> BulkInsert:
    """`suffix`: what follows the SELECT (`ON CONFLICT …`, `RETURNING …`); `prefix`: of the
    parameter names, for a statement that holds several of these (batch_write.py)."""
    arrays = [(prefix + c, array_type(table, c)) for c in columns]
    text = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"SELECT {', '.join(selected(table, c) for c in columns)} "
        f"FROM {unnest(arrays, columns)} {suffix}"
    )
    return BulkInsert(text, table, tuple(columns), prefix)


def column_arrays(
    table: sa.Table, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], prefix: str = ""
) -> dict[str, list[Any]]:
    """One array per column, named `prefix + column`; JSON values go as text and are cast in
    the statement (`selected`). Names that are not the table's columns (keys to match rows
    by, say) go as they are."""
    return {
        prefix + name: [json_text(r[name]) for r in rows]
        if name in table.c and is_json(table, name)
        else [r[name] for r in rows]
        for name in columns
    }


def unnest(arrays: Sequence[tuple[str, str]], alias: Sequence[str]) -> str:
    """`unnest(CAST(%(param)s AS type[]), ...) AS v(alias...)` for (param, type) pairs."""
    cast = ", ".join(f"CAST(%({param})s AS {kind}[])" for param, kind in arrays)
    return f"unnest({cast}) AS v({', '.join(alias)})"


def is_json(table: sa.Table, column: str) -> bool:
    return isinstance(table.c[column].type, JSONB)


def array_type(table: sa.Table, column: str) -> str:
    # JSON travels as text: psycopg has no jsonb[] to adapt a list of dicts to.
    return "text" if is_json(table, column) else sql_type(table.c[column])


def selected(table: sa.Table, column: str) -> str:
    """The column's value from `unnest`'s row `v`, JSON cast back from text."""
    return f"CAST(v.{column} AS jsonb)" if is_json(table, column) else f"v.{column}"


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
    if isinstance(kind, sa.Numeric):
        return "numeric"
    if isinstance(kind, sa.Boolean):
        return "boolean"
    raise TypeError(f"bulk_insert: no array type for column {column.name} ({kind!r})")


def json_text(value: Any) -> str | None:
    # none_as_null, as the tables declare: None is SQL NULL, not the JSON null.
    return None if value is None else json.dumps(value)
