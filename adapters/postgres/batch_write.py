"""Everything a batch of transitions writes, in one statement.

A transition used to be four statements after the lock and the load: update the instances,
update the steps, insert the history, insert the outbox rows, each a round trip (and the two
updates a pipelined `executemany` of one statement per row). Here they are data-modifying
CTEs over `unnest` arrays, one per kind of row, in one statement whose text does not depend
on the batch size, so psycopg prepares it once; it is psycopg's text (`%(name)s`), sent
straight through the driver (adapters/postgres/driver.py). The search field values a start
or a completion stores are one more such CTE, an upsert into saga_search. PostgreSQL runs every
data-modifying CTE to completion whether or not the final SELECT reads it; the SELECT reports
how many instances matched their revision (fewer than asked: a concurrent update) and the
outbox ids.

Nothing here relies on the order the CTEs run in: they touch five different tables, and the
history's `max(seq)` reads the table as it was before the statement, as the single-table
insert did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from adapters.postgres.bulk import (
    array_type,
    bulk_insert,
    column_arrays,
    json_text,
    selected,
    sql_type,
    unnest,
)
from adapters.postgres.rows import PROGRESS_COLUMNS, progress_values, step_values
from adapters.postgres.tables import (
    SEARCH_COLUMNS,
    outbox,
    saga_instances,
    saga_search,
    saga_steps,
)
from orchestrator.messages import OutboxMessage
from orchestrator.ports import HistoryAppends, SearchWrites, Transitions

# The step columns a transition may change (name, idx and item never do; payload is set
# when a step with payload= or a child step begins, and holds a wait step's signal).
CHANGING_STEP_COLUMNS = (
    "status",
    "attempt",
    "compensation_attempt",
    "command_id",
    "due_at",
    "result",
    "error",
    "started_at",
    "dispatched_at",
    "progress",
    "retry_base",
    "close_at",
    "payload",
)
OUTBOX_COLUMNS = ("exchange", "routing_key", "body", "message_id", "reply_to", "headers")
_HISTORY_ARRAYS = (
    ("h_saga_id", "uuid"),
    ("h_n", "int"),
    ("h_event", "text"),
    ("h_step", "text"),
    ("h_detail", "text"),
    ("h_actor", "text"),
)


def _update(table: sa.Table, prefix: str, keys: Sequence[str], columns: Sequence[str]) -> str:
    """`UPDATE table SET columns FROM unnest(...) WHERE keys match`, one row per array slot.
    Key `w_revision` matches the row's current revision; the others its own column."""
    arrays = [(f"{prefix}w_{k}", sql_type(table.c[k])) for k in keys] + [
        (f"{prefix}{c}", array_type(table, c)) for c in columns
    ]
    alias = [f"w_{k}" for k in keys] + list(columns)
    sets = ", ".join(f"{c} = {selected(table, c)}" for c in columns)
    where = " AND ".join(f"t.{k} = v.w_{k}" for k in keys)
    return f"UPDATE {table.name} AS t SET {sets} FROM {unnest(arrays, alias)} WHERE {where}"


_OUTBOX = bulk_insert(outbox, OUTBOX_COLUMNS, "RETURNING id", prefix="o_")
# A value replaces the field's earlier one.
_SEARCH = bulk_insert(
    saga_search,
    ("saga_id", "name", *SEARCH_COLUMNS.values()),
    "ON CONFLICT (saga_id, name) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in SEARCH_COLUMNS.values()),
    prefix="x_",
)
STATEMENT = f"""
    WITH inst AS (
        {_update(saga_instances, "i_", ("id", "revision"), PROGRESS_COLUMNS)}
        RETURNING 1
    ), steps AS (
        {_update(saga_steps, "s_", ("saga_id", "idx"), CHANGING_STEP_COLUMNS)}
    ), hist AS (
        INSERT INTO saga_history (saga_id, seq, event, step, detail, actor)
        SELECT v.saga_id,
               v.n + coalesce(
                   (SELECT max(h.seq) FROM saga_history h WHERE h.saga_id = v.saga_id), 0
               ),
               v.event, v.step, CAST(v.detail AS jsonb), v.actor
        FROM {unnest(_HISTORY_ARRAYS, ("saga_id", "n", "event", "step", "detail", "actor"))}
    ), ob AS (
        {_OUTBOX.statement}
    ), search AS (
        {_SEARCH.statement}
    )
    SELECT (SELECT count(*) FROM inst) AS moved, ARRAY(SELECT id FROM ob ORDER BY id) AS ids
"""


def params(
    changes: Transitions,
    appends: HistoryAppends,
    messages: Sequence[OutboxMessage],
    search: SearchWrites = (),
) -> dict[str, list[Any]]:
    """The parameters of one `STATEMENT`: one array per column of each kind of row."""
    instances = [
        {"w_id": before.saga_id, "w_revision": before.revision, **progress_values(after)}
        for before, after in changes
    ]
    steps = [
        {"w_saga_id": after.saga_id, "w_idx": new.index, **step_values(new)}
        for before, after in changes
        for old, new in zip(before.steps, after.steps[: len(before.steps)], strict=True)
        if old != new
    ]
    rows = [
        {
            "exchange": m.exchange,
            "routing_key": m.routing_key,
            "body": m.body,
            "message_id": m.message_id,
            "reply_to": m.reply_to,
            "headers": dict(m.headers) if m.headers else None,
        }
        for m in messages
    ]
    return {
        **column_arrays(saga_instances, instances, ("w_id", "w_revision", *PROGRESS_COLUMNS), "i_"),
        **column_arrays(saga_steps, steps, ("w_saga_id", "w_idx", *CHANGING_STEP_COLUMNS), "s_"),
        **_history(appends),
        **_OUTBOX.params(rows),
        **_SEARCH.params(_search_rows(search)),
    }


def _search_rows(search: SearchWrites) -> list[dict[str, Any]]:
    """One row per (saga, field), the last value given winning: one statement may not
    write a row twice."""
    latest = {(saga_id, value.name): value for saga_id, value in search}
    return [
        {
            "saga_id": saga_id,
            "name": name,
            **{c: value.value if value.kind == k else None for k, c in SEARCH_COLUMNS.items()},
        }
        for (saga_id, name), value in latest.items()
    ]


def _history(appends: HistoryAppends) -> dict[str, list[Any]]:
    """Each entry numbered 1, 2, ... per saga across the whole batch; the statement adds the
    saga's last seq. Safe without a sequence: every writer holds the saga's row lock."""
    n: Counter[UUID] = Counter()
    columns: dict[str, list[Any]] = {name: [] for name, _ in _HISTORY_ARRAYS}
    for saga_id, entries, actor in appends:
        for entry in entries:
            n[saga_id] += 1
            columns["h_saga_id"].append(saga_id)
            columns["h_n"].append(n[saga_id])
            columns["h_event"].append(entry.event)
            columns["h_step"].append(entry.step)
            columns["h_detail"].append(json_text(entry.detail))
            columns["h_actor"].append(actor)
    return columns
