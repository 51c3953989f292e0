"""bench.retention: do list and status queries keep their latency with a million finished
sagas in the tables, while retention deletes most of them, and after?

    .venv/bin/python -m bench.retention [--sagas 1000000] [--older-than 1d] [--batch 1000]
        [--lookups 300] [--archive DIR] [--json FILE] [--keep]

One database of its own (`retention_<run>`, migrated, dropped at the end unless --keep),
seeded with `--sagas` finished bench sagas spread over the past 30 days
(bench/growth_seed.py), then:

1. before: each query kind timed `--lookups` times, one call at a time, on random sagas the
   prune will keep (ended within `--older-than`, less a margin), so every call finds its saga
   in every phase;
2. during: `adapters.postgres.retention.prune` (what `saga prune` and the sweep of `saga run`
   run) deletes everything older than `--older-than` in batches of `--batch`, while the same
   kinds are timed round-robin until it ends; its time, sagas/s and slowest batch are kept;
   with `--archive DIR` each batch is archived first (adapters/archive.py: `saga prune
   --archive DIR`), and the archive's size is kept too;
3. after: the same, right after the prune (dead tuples still in place, as autovacuum would
   find them), then after `VACUUM ANALYZE`.

Kinds: `get` (a saga and its steps: `saga status <id>`, GET /api/sagas/{id}), `find_key` (by
saga name and key), `find_key_any` (by key alone: `saga status <key>`), `history`, `list`
(the first page newest first, no filter: the dashboard), `list_status` (the first page of
`status=completed`: `saga list --status completed`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from adapters.archive import DirectoryArchive
from adapters.durations import parse_duration
from adapters.postgres.database import make_engine
from adapters.postgres.migrate import upgrade
from adapters.postgres.retention import Pruned, prune
from adapters.postgres.store import PostgresStore
from adapters.settings import Settings
from bench.growth_deploy import database_url, dsn
from bench.growth_queries import Lookup, store_lookups
from bench.growth_seed import seed
from bench.stats import percentiles
from orchestrator.ports import SagaQuery
from orchestrator.registry import Registry
from orchestrator.state import SagaStatus
from tests.fixtures.databases import drop_database

KINDS = ("get", "find_key", "find_key_any", "history", "list", "list_status")
PHASES = ("before", "during", "after", "after_vacuum")


def lookups(store: PostgresStore) -> dict[str, Lookup]:
    """bench.growth's status and list queries, plus the list by status."""

    async def status_page(saga_id: UUID, key: str) -> object:
        found = await store.find(SagaQuery(status=SagaStatus.COMPLETED, limit=51))
        if not found:
            raise RuntimeError(f"no completed saga listed (looking for {saga_id})")
        return found

    return {**store_lookups(store), "list_status": status_page}


async def survivors(conninfo: str, newer_than: datetime, count: int) -> list[tuple[UUID, str]]:
    """`count` random finished sagas that ended after `newer_than` (repeated if fewer)."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, key FROM saga_instances WHERE updated_at > %s ORDER BY random() LIMIT %s",
            (newer_than, count),
        )
        rows = [(UUID(str(i)), str(k)) for i, k in await cur.fetchall()]
    if not rows:
        raise RuntimeError("no saga survives the prune: lower --older-than's share")
    return [rows[i % len(rows)] for i in range(count)]


async def time_kinds(
    calls: dict[str, Lookup],
    sample: list[tuple[UUID, str]],
    per_kind: int,
    until: asyncio.Event | None = None,
) -> dict[str, dict[str, float | None]]:
    """Time each kind `per_kind` times, round-robin over the kinds; with `until`, go on
    round after round until it is set (at least one round)."""
    took: dict[str, list[float]] = {kind: [] for kind in KINDS}
    i = 0
    while True:
        for _ in range(per_kind):
            for kind in KINDS:
                saga_id, key = sample[i % len(sample)]
                i += 1
                began = time.perf_counter()
                await calls[kind](saga_id, key)
                took[kind].append((time.perf_counter() - began) * 1000)
            if until is not None and until.is_set():
                break
        if until is None or until.is_set():
            break
    return {kind: {"n": len(ms), **percentiles(ms)} for kind, ms in took.items()}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings()
    run_id = uuid.uuid4().hex[:8]
    url = database_url(base.database_url, f"retention_{run_id}")
    print(f"retention {run_id}: {args.sagas:,} finished sagas, prune older than {args.older_than}")
    figures: dict[str, Any] = {"run_id": run_id, "sagas": args.sagas, "batch": args.batch}
    # The bench saga has no wait steps: no definitions needed to archive it as status shows it.
    archive = None if args.archive is None else DirectoryArchive(args.archive, Registry())
    try:
        await upgrade(url)
        seeded = await seed(dsn(url), args.sagas)
        figures["seed_seconds"] = round(seeded.seconds + seeded.vacuum_seconds, 1)
        figures["database_mb_before"] = round(seeded.database_mb)
        print(f"seeded in {figures['seed_seconds']} s, {seeded.database_mb:,.0f} MB", flush=True)
        now = datetime.now(UTC)
        # A margin, so that no sampled saga crosses the cutoff while the bench runs.
        sample = await survivors(
            dsn(url), now - args.older_than + timedelta(hours=1), args.lookups * len(KINDS)
        )
        random.shuffle(sample)
        engine = make_engine(url, pool_size=2)
        try:
            calls = lookups(PostgresStore(engine))
            await time_kinds(calls, sample, 1)  # warm the connection, untimed
            queries: dict[str, Any] = {}
            queries["before"] = await time_kinds(calls, sample, args.lookups)
            print("before:", _line(queries["before"]), flush=True)

            queries["during"], figures["prune"] = await prune_timing(
                url,
                calls,
                sample,
                older_than=args.older_than,
                batch=args.batch,
                now=now,
                archive=archive,
            )
            print("during:", _line(queries["during"]), flush=True)
            p = figures["prune"]
            print(
                f"pruned {p['sagas']:,} sagas in {p['seconds']} s "
                f"({p['sagas_per_s']:,}/s, {p['batches']} batches)",
                flush=True,
            )
            queries["after"] = await time_kinds(calls, sample, args.lookups)
            print("after:", _line(queries["after"]), flush=True)
            figures |= await vacuum(dsn(url))
            queries["after_vacuum"] = await time_kinds(calls, sample, args.lookups)
            print("after vacuum:", _line(queries["after_vacuum"]), flush=True)
            figures["queries_ms"] = queries
        finally:
            await engine.dispose()
    finally:
        if not args.keep:
            await drop_database(url)
    return figures


async def prune_timing(
    url: str,
    calls: dict[str, Lookup],
    sample: list[tuple[UUID, str]],
    *,
    older_than: timedelta,
    batch: int,
    now: datetime,
    archive: DirectoryArchive | None = None,
) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:
    """Prune on a connection of its own while the kinds are timed round-robin; the
    timings, and the prune's figures."""
    done = asyncio.Event()
    batch_ms: list[float] = []
    last = [time.perf_counter()]

    def on_batch(_: int) -> None:
        t = time.perf_counter()
        batch_ms.append((t - last[0]) * 1000)
        last[0] = t

    async def pruning() -> Pruned:
        engine = make_engine(url, pool_size=1)
        try:
            return await prune(
                engine, older_than, batch=batch, now=now, on_batch=on_batch, archive=archive
            )
        finally:
            await engine.dispose()
            done.set()

    task = asyncio.create_task(pruning())
    during = await time_kinds(calls, sample, 10, until=done)
    pruned = await task
    figures: dict[str, Any] = {
        "sagas": pruned.sagas,
        "batches": pruned.batches,
        "seconds": round(pruned.seconds, 1),
        "sagas_per_s": round(pruned.sagas_per_second),
        "batch_ms": percentiles(batch_ms) | {"max": max(batch_ms, default=None)},
    }
    if archive is not None:
        figures["archive_files"] = len(archive.files)
        figures["archive_mb"] = round(sum(f.stat().st_size for f in archive.files) / 2**20, 1)
    return during, figures


async def vacuum(conninfo: str) -> dict[str, Any]:
    """VACUUM ANALYZE the pruned tables, as autovacuum would; its time and what is left."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        began = time.perf_counter()
        await conn.execute("VACUUM ANALYZE saga_instances, saga_steps, saga_history")
        took = round(time.perf_counter() - began, 1)
        cur = await conn.execute(
            "SELECT count(*), pg_database_size(current_database()) FROM saga_instances"
        )
        row = await cur.fetchone()
    assert row is not None
    return {
        "vacuum_seconds": took,
        "sagas_left": row[0],
        "database_mb_after": round(row[1] / 2**20),
    }


def _line(kinds: dict[str, dict[str, float | None]]) -> str:
    return ", ".join(f"{k} p50 {_ms(v['p50'])} p99 {_ms(v['p99'])}" for k, v in kinds.items())


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(figures: dict[str, Any]) -> str:
    """A markdown table: p50 / p99 ms per kind and phase, and the prune's figures."""
    queries = figures["queries_ms"]
    lines = [
        "| query | " + " | ".join(PHASES) + " |",
        "| --- |" + " --- |" * len(PHASES),
    ]
    for kind in KINDS:
        cells = [f"{_ms(queries[p][kind]['p50'])} / {_ms(queries[p][kind]['p99'])}" for p in PHASES]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    p = figures["prune"]
    lines += [
        "",
        f"p50 / p99 ms. Prune: {p['sagas']:,} of {figures['sagas']:,} sagas in "
        f"{p['seconds']} s ({p['sagas_per_s']:,}/s), {p['batches']} batches of "
        f"{figures['batch']}, batch p50 {_ms(p['batch_ms']['p50'])} ms, max "
        f"{_ms(p['batch_ms']['max'])} ms; VACUUM {figures['vacuum_seconds']} s; database "
        f"{figures['database_mb_before']:,} MB before, {figures['database_mb_after']:,} MB after."
        + (
            f" Archived first: {p['archive_files']} files, {p['archive_mb']} MB."
            if "archive_files" in p
            else ""
        ),
    ]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__)
    parser.add_argument("--sagas", type=int, default=1_000_000, help="finished sagas (10^6)")
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        default=parse_duration("1d"),
        help="prune sagas that ended longer ago (1d: about 29/30 of the seeded ones)",
    )
    parser.add_argument("--batch", type=int, default=1000, help="sagas per transaction (1000)")
    parser.add_argument("--lookups", type=int, default=300, help="calls per kind per phase")
    parser.add_argument(
        "--archive", type=Path, help="archive each batch to this directory before deleting it"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # SIGTERM unwinds like Ctrl-C, through the finally that drops the database.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    figures = asyncio.run(main(args))
    print()
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    cli()
