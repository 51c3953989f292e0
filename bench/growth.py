"""`python -m bench.growth`: does the engine get slower as finished sagas pile up, and what
does it hold in memory with thousands in flight? See bench/GROWTH.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from adapters.postgres.database import ensure_database
from adapters.postgres.migrate import upgrade
from adapters.settings import Settings
from bench import growth_queries
from bench.engine import EngineDb, Publisher, saturate, summary
from bench.growth_deploy import Deployment, database_url, deployed, dsn
from bench.growth_memory import in_flight
from bench.growth_report import report
from bench.growth_seed import seed
from bench.stats import CpuMeter
from tests.fixtures.databases import drop_database


async def saturation(
    dep: Deployment, url: str, keys: list[tuple[str, int]], timeout: float
) -> dict[str, Any]:
    """bench.run's saturation phase: the starts as fast as the broker confirms them, until
    every saga is terminal; end to end is publish -> terminal status_since."""
    publisher, db = Publisher(dep.settings), EngineDb(dsn(url))
    await publisher.open()
    await db.open()
    try:
        meter = CpuMeter({name: proc.pid for name, proc in dep.procs.procs.items()})
        result, cpu = await saturate(publisher, db, keys, meter, timeout)
    finally:
        await publisher.close()
        await db.close()
    n = len(keys)
    return {
        **summary(result, n),
        "orchestrator_ready_seconds": dep.ready_seconds,
        # Per process of this deployment; postgres and rabbitmq count whatever else the
        # machine runs meanwhile.
        "cpu_ms_per_saga": {name: s * 1000 / n for name, s in cpu.items()},
    }


async def prepare(base: Settings, run_id: str, finished: int, created: list[str]) -> dict[str, Any]:
    """The level's databases, the engine's seeded with `finished` finished sagas."""
    name = f"growth_{run_id}_{finished}"
    url, participant_url = (database_url(base.database_url, name + s) for s in ("", "_p"))
    created += [url, participant_url]
    await upgrade(url)
    await ensure_database(participant_url)
    seeded = await seed(dsn(url), finished)
    print(
        f"level {finished:,}: seeded in {seeded.seconds:.1f}s "
        f"(+{seeded.vacuum_seconds:.1f}s VACUUM ANALYZE, {seeded.database_mb:,.0f} MB)",
        flush=True,
    )
    return {
        "finished": finished,
        "url": url,
        "participant_url": participant_url,
        "seed_seconds": seeded.seconds,
        "vacuum_seconds": seeded.vacuum_seconds,
        "history_rows": seeded.history_rows,
        "database_mb": seeded.database_mb,
        "rounds": [],
    }


async def run_round(
    base: Settings, run_id: str, level: dict[str, Any], r: int, args: argparse.Namespace
) -> None:
    """One saturation run on the level (and, the first time, the status queries)."""
    finished, url = level["finished"], level["url"]
    async with deployed(
        base,
        f"growth-{run_id}-{finished}-{r}.",
        url,
        args.log_dir / f"level-{finished}" / f"round-{r}",
        participant_url=level["participant_url"],
        http=r == 0,
    ) as dep:
        keys = [(f"sat-{r}-{i}", i) for i in range(args.sagas)]
        sat = await saturation(dep, url, keys, args.timeout)
        level["rounds"].append(sat)
        print(f"  round {r + 1}, {finished:,}: {_rate(sat)} sagas/s", flush=True)
        if dep.http_base is not None:
            level["queries_ms"] = await growth_queries.measure(
                url, dep.http_base, args.lookups, args.query_budget
            )
            level["search_plans"] = await growth_queries.plans(url)


def _median(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]  # the lower one of an even count


def summarise(levels: list[dict[str, Any]]) -> None:
    """Each level's median round (by sagas/s) as its saturation figures, and its ratio to
    level 0: the median over rounds of the two rates measured in the same round. Rounds
    take the levels in turn, so a burst of load from elsewhere on the machine lands on
    every level of one round alike, and a round's ratio cancels it out."""
    zero = next((lv for lv in levels if lv["finished"] == 0), None)
    for level in levels:
        rates = [sat["sagas_per_s"] or 0.0 for sat in level["rounds"]]
        median = _median(rates)
        level["saturation"] = level["rounds"][rates.index(median)]
        level["sagas_per_s_rounds"] = rates
        ratios = [] if zero is None else _ratios(rates, zero["rounds"])
        level["sagas_per_s_vs_level_0_rounds"] = ratios
        level["sagas_per_s_vs_level_0"] = _median(ratios) if ratios else None
    for level in levels:
        del level["url"], level["participant_url"]


def _ratios(rates: list[float], zero_rounds: list[dict[str, Any]]) -> list[float]:
    zero_rates = [sat["sagas_per_s"] or 0.0 for sat in zero_rounds]
    return [rate / z for rate, z in zip(rates, zero_rates, strict=True) if rate and z]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    base = Settings()
    run_id = uuid.uuid4().hex[:8]
    print(f"growth {run_id}: levels {args.finished}, logs in {args.log_dir}", flush=True)
    created: list[str] = []
    levels: list[dict[str, Any]] = []
    memory: dict[str, Any] | None = None
    try:
        for finished in args.finished:
            levels.append(await prepare(base, run_id, finished, created))
        for r in range(args.rounds):
            for level in levels:
                await run_round(base, run_id, level, r, args)
        if args.in_flight:
            print(f"in flight: {args.in_flight:,} sagas, no participant", flush=True)
            url = database_url(base.database_url, f"growth_{run_id}_inflight")
            created.append(url)
            memory = await in_flight(
                base,
                f"growth-{run_id}-inflight.",
                url,
                args.log_dir / "in-flight",
                count=args.in_flight,
                settle=args.settle,
                timeout=args.timeout,
            )
    finally:
        if not args.keep:
            for url in created:
                await drop_database(url)
    summarise(levels)
    return {
        "run_id": run_id,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sagas": args.sagas,
        "rounds": args.rounds,
        "lookups": args.lookups,
        "levels": levels,
        "in_flight": memory,
        "seconds": time.perf_counter() - began,
    }


def _rate(sat: dict[str, Any]) -> str:
    return "-" if sat["sagas_per_s"] is None else f"{sat['sagas_per_s']:,.1f}"


def _levels(value: str) -> list[int]:
    return [int(part.replace("_", "")) for part in value.split(",") if part.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    parser.add_argument(
        "--finished",
        type=_levels,
        default=[0, 100_000, 1_000_000],
        help="finished sagas seeded before each level's run, comma-separated (0,100000,1000000)",
    )
    parser.add_argument("--sagas", type=int, default=2000, help="sagas at saturation (2000)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="saturation runs per level, interleaved (3)"
    )
    parser.add_argument("--in-flight", type=int, default=10_000, help="sagas in flight; 0: skip")
    parser.add_argument("--lookups", type=int, default=500, help="status queries per kind (500)")
    parser.add_argument(
        "--query-budget", type=float, default=60.0, help="seconds per kind at most (60)"
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds of sweeps (5)")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline per phase, s")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.log_dir = Path(tempfile.mkdtemp(prefix="saga-growth-"))
    return args


def cli(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # SIGTERM (a timeout, `kill`) unwinds like Ctrl-C, through the finally blocks that stop
    # `saga run` and the participant, delete the broker names and drop the databases.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    figures = asyncio.run(main(args))
    print()
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    cli()
