"""Finished bench sagas written straight into an engine database, as a real run leaves them.

The rows copy what `saga run` writes for the bench saga (bench/sagas.py) once it has ended:
90% completed (8 history events each), 10% compensated at c (13 events), three step rows,
one search field row (n), created over the past 30 days, steps taking 20-60 ms. Set-based
SQL only: a million sagas are about 14 million rows, which row-by-row inserts would take hours
to write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from bench.sagas import FAIL_EVERY, saga

# The participant's refusal (bench/participant.py) and what the engine records from it.
_MESSAGE = "every tenth bench saga fails at c"
_STEP_ERROR: dict[str, object] = {"type": "bench_failure", "message": _MESSAGE, "retryable": False}
_SAGA_ERROR: dict[str, object] = {"step": "c", "type": "step_failed", "message": _MESSAGE}

# One row per history event: (seq, event, step, actor, slot, detail, extra, outcome).
# `slot` indexes the saga's timeline (below); `extra` names what is added to `detail` per
# saga: the command id of a dispatch, the seconds a step took. `outcome` None: every saga.
# The start and the first dispatch come in on the broker's start message, hence that actor.
_Event = tuple[int, str, str | None, str, int, dict[str, object] | None, str, str | None]
_EVENTS: list[_Event] = [
    (1, "saga_started", None, "broker", 0, {"version": saga.version}, "", None),
    (2, "step_dispatched", "a", "broker", 0, {"attempt": 1, "command": "bench.a"}, "id", None),
    (3, "step_succeeded", "a", "engine", 1, {"attempt": 1}, "took", None),
    (4, "step_dispatched", "b", "engine", 1, {"attempt": 1, "command": "bench.b"}, "id", None),
    (5, "step_succeeded", "b", "engine", 2, {"attempt": 1}, "took", None),
    (6, "step_dispatched", "c", "engine", 2, {"attempt": 1, "command": "bench.c"}, "id", None),
    (7, "step_succeeded", "c", "engine", 3, {"attempt": 1}, "took", "completed"),
    (8, "saga_completed", None, "engine", 3, None, "", "completed"),
    (7, "step_failed", "c", "engine", 3, {"error": _STEP_ERROR, "attempt": 1}, "", "compensated"),
    (8, "saga_compensating", "c", "engine", 3, {"reason": _MESSAGE}, "", "compensated"),
    (
        9,
        "compensation_dispatched",
        "b",
        "engine",
        3,
        {"attempt": 1, "command": "bench.undo_b"},
        "undo_id",
        "compensated",
    ),
    (10, "step_compensated", "b", "engine", 4, {"attempt": 1}, "took", "compensated"),
    (
        11,
        "compensation_dispatched",
        "a",
        "engine",
        4,
        {"attempt": 1, "command": "bench.undo_a"},
        "undo_id",
        "compensated",
    ),
    (12, "step_compensated", "a", "engine", 5, {"attempt": 1}, "took", "compensated"),
    (13, "saga_compensated", None, "engine", 5, _SAGA_ERROR, "", "compensated"),
]


def _timeline() -> str:
    """Each saga's timeline, ts[1..6] (SQL arrays count from 1): start and dispatch of a;
    a done, b dispatched; b done, c dispatched; c done or failed (and undo_b dispatched);
    undo_b done, undo_a dispatched; undo_a done. Step k takes 20 to 60 ms, varying with the
    saga's number n. Rows go in by creation time, as a live system appends them."""
    took = [f"(20 + (n * 31 + {17 * k}) %% 41)" for k in range(1, 6)]
    ts = ["t0", *(f"t0 + interval '1 millisecond' * ({' + '.join(took[:k])})" for k in range(1, 6))]
    return f"""
CREATE TEMP TABLE seed ON COMMIT DROP AS
SELECT n, id, n %% {FAIL_EVERY} = {FAIL_EVERY - 1} AS fails, ARRAY[{", ".join(ts)}] AS ts
FROM (SELECT n, gen_random_uuid() AS id, now() - random() * interval '30 days' AS t0
      FROM generate_series(0, %(count)s - 1) n) s
ORDER BY t0
"""


_INSTANCES = """
INSERT INTO saga_instances (id, name, version, key, status, input, error, revision,
                            created_at, updated_at, status_since)
SELECT id, %(name)s, %(version)s, 'seed-' || n,
       CASE WHEN fails THEN 'compensated' ELSE 'completed' END,
       jsonb_build_object('n', n),
       CASE WHEN fails THEN %(saga_error)s::jsonb END,
       CASE WHEN fails THEN 5 ELSE 3 END,  -- one revision per reply: 3 steps, or 3 + 2 undos
       ts[1], ts[CASE WHEN fails THEN 6 ELSE 4 END], ts[CASE WHEN fails THEN 6 ELSE 4 END]
FROM seed
"""

# A step row keeps its latest command: the compensation's once it was undone; c's failed
# attempt has none left. dispatched_at is that command's dispatch.
_STEPS = """
INSERT INTO saga_steps (saga_id, idx, name, status, attempt, compensation_attempt,
                        command_id, error, dispatched_at)
SELECT s.id, st.idx, st.name,
       CASE WHEN NOT s.fails THEN 'succeeded' WHEN st.idx = 2 THEN 'failed'
            ELSE 'compensated' END,
       1,
       CASE WHEN s.fails AND st.idx < 2 THEN 1 ELSE 0 END,
       CASE WHEN NOT s.fails THEN md5(s.id || ':' || st.name || ':id')::uuid
            WHEN st.idx < 2 THEN md5(s.id || ':' || st.name || ':undo_id')::uuid END,
       CASE WHEN s.fails AND st.idx = 2 THEN %(step_error)s::jsonb END,
       CASE WHEN NOT s.fails OR st.idx = 2 THEN s.ts[st.idx + 1]
            ELSE s.ts[5 - st.idx] END  -- undo_b went out when c failed, undo_a after it
FROM seed s CROSS JOIN (VALUES (0, 'a'), (1, 'b'), (2, 'c')) st(idx, name)
"""

# The bench saga's one search field, its number n, as a start writes it.
_SEARCH = """
INSERT INTO saga_search (saga_id, name, num_value) SELECT id, 'n', n FROM seed
"""

_HISTORY = """
INSERT INTO saga_history (saga_id, seq, at, event, step, detail, actor)
SELECT s.id, e.seq, s.ts[e.slot + 1], e.event, e.step,
       e.detail || CASE
           WHEN e.extra = 'took' THEN jsonb_build_object(
               'seconds', round(extract(epoch FROM s.ts[e.slot + 1] - s.ts[e.slot]), 3)::float8)
           WHEN e.extra <> '' THEN  -- 'id' or 'undo_id', as the step rows name them
               jsonb_build_object('command_id', md5(s.id || ':' || e.step || ':' || e.extra)::uuid)
           ELSE '{}'::jsonb END,
       e.actor
FROM seed s JOIN seed_events e
  ON e.outcome IS NULL OR e.outcome = CASE WHEN s.fails THEN 'compensated' ELSE 'completed' END
"""


@dataclass(frozen=True)
class Seeded:
    sagas: int
    seconds: float  # the inserts, one transaction
    vacuum_seconds: float  # VACUUM ANALYZE of the three tables
    history_rows: int
    database_mb: float


async def seed(dsn: str, count: int) -> Seeded:
    """Write `count` finished bench sagas into the (migrated, empty) database at `dsn`."""
    _check_definition()
    began = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        if count:
            await _insert(conn, count)
        await conn.commit()
        inserted = time.perf_counter()
        await conn.set_autocommit(True)  # VACUUM refuses to run inside a transaction
        # Marks the pages all-visible (index-only scans, no hint-bit writes on first read)
        # and gives the planner statistics, as autovacuum would have long since done.
        await conn.execute("VACUUM ANALYZE saga_instances, saga_steps, saga_history, saga_search")
        vacuumed = time.perf_counter()
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM saga_history), pg_database_size(current_database())"
        )
        row = await cur.fetchone()
    assert row is not None
    return Seeded(
        sagas=count,
        seconds=inserted - began,
        vacuum_seconds=vacuumed - inserted,
        history_rows=int(row[0]),
        database_mb=int(row[1]) / 2**20,
    )


async def _insert(conn: psycopg.AsyncConnection[tuple[object, ...]], count: int) -> None:
    await conn.execute(_timeline(), {"count": count})
    await conn.execute(
        "CREATE TEMP TABLE seed_events (seq int, event text, step text, actor text, slot int,"
        " detail jsonb, extra text, outcome text) ON COMMIT DROP"
    )
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO seed_events VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(*e[:5], None if e[5] is None else Jsonb(e[5]), *e[6:]) for e in _EVENTS],
        )
    params = {
        "name": saga.name,
        "version": saga.version,
        "saga_error": Jsonb(_SAGA_ERROR),
        "step_error": Jsonb(_STEP_ERROR),
    }
    await conn.execute(_INSTANCES, params)
    await conn.execute(_STEPS, params)
    await conn.execute(_SEARCH)
    await conn.execute(_HISTORY)


def _check_definition() -> None:
    """The rows above spell out the bench saga's shape: refuse to seed a different one."""
    shape = [(s.name, s.command, s.compensation) for s in saga.steps]
    expected = [
        ("a", "bench.a", "bench.undo_a"),
        ("b", "bench.b", "bench.undo_b"),
        ("c", "bench.c", None),
    ]
    search = [f.document() for f in saga.search]
    if shape != expected or search != [
        {"name": "n", "source": "input", "path": "n", "kind": "number"}
    ]:
        raise RuntimeError(
            f"bench/sagas.py changed (steps {shape}, search {search}): update "
            "bench/growth_seed.py to match"
        )
