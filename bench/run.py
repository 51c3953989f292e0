"""`python -m bench.run`: the bench saga through real `saga run` + the bench participant, and the
same workload on the hand-written floor, side by side. See bench/README.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from adapters.postgres.database import ensure_database
from adapters.postgres.migrate import upgrade
from adapters.settings import Settings
from adapters.text_table import render_table
from bench import floor
from bench.engine import (
    EngineDb,
    EngineResult,
    Publisher,
    next_xid,
    publish_all,
    publish_at_rate,
    xact_commits,
)
from bench.stats import CpuMeter, peak_rss_mb, percentiles
from examples.demo import wait_for_consumers
from examples.processes import Processes


def _urls(settings: Settings, run_id: str) -> dict[str, str]:
    base = make_url(settings.database_url)
    return {
        suffix: base.set(database=f"bench_{run_id}{suffix}").render_as_string(hide_password=False)
        for suffix in ("", "_p", "_floor")
    }


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _phase(statuses: dict[str, int], seconds: float, lat: list[float], n: int) -> dict[str, Any]:
    # Steps run: a, b, c for a completed saga; a, b, c (failed), undo_b, undo_a when compensated.
    steps = 3 * statuses.get("completed", 0) + 5 * statuses.get("compensated", 0)
    return {
        "sagas": n,
        "statuses": statuses,
        "seconds": seconds,
        "sagas_per_s": n / seconds if seconds > 0 else None,
        "steps_per_s": steps / seconds if seconds > 0 else None,
        "latency_ms": percentiles(lat),
    }


async def run_engine(
    settings: Settings, urls: dict[str, str], args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    db, pdb = make_url(urls[""]).database, make_url(urls["_p"]).database
    assert db and pdb
    await upgrade(urls[""])
    await ensure_database(urls["_p"])
    procs = Processes(
        env={
            "SAGA_DATABASE_URL": urls[""],
            "SAGA_AMQP_URL": settings.amqp_url,
            "SAGA_AMQP_PREFIX": settings.amqp_prefix,
            "SAGA_MODULES": "bench.sagas",
            "SAGA_LOG_FORMAT": "json",
            "SAGA_HTTP_BIND": "",
            "BENCH_DATABASE_URL": urls["_p"],
        },
        log_dir=log_dir,
    )
    publisher = Publisher(settings)
    engine_db = EngineDb(_dsn(urls[""]))
    try:
        procs.start_orchestrator()
        procs.start("participant", ["-m", "bench.participant"])
        await wait_for_consumers(settings, ["saga.requests", "saga.replies", "commands.bench"])
        await publisher.open()
        await engine_db.open()
        meter = CpuMeter({name: proc.pid for name, proc in procs.procs.items()})
        admin = _dsn(urls[""])

        # (1) saturation
        keys = [(f"sat-{i}", i) for i in range(args.sagas)]
        sat = EngineResult()
        await asyncio.sleep(args.stats_wait)
        x0, p0, q0 = (
            await xact_commits(admin, db),
            await xact_commits(admin, pdb),
            engine_db.queries,
        )
        xid0 = await next_xid(admin)
        meter.start()
        await publish_all(publisher, keys, sat)
        await engine_db.wait_terminal([k for k, _ in keys], timeout=args.timeout)
        cpu = meter.stop()
        xid1 = await next_xid(admin)
        await asyncio.sleep(args.stats_wait)
        # The bench's own polls count as transactions of the engine's database: take them out
        # (the two readings of xact_commits run on the admin connection, in the same database).
        own = engine_db.queries - q0 + 1
        x1, p1 = await xact_commits(admin, db), await xact_commits(admin, pdb)
        await engine_db.collect(sat)

        # (2) fixed arrival rate
        count = int(args.rate * args.rate_seconds)
        rate_keys = [(f"rate-{i}", args.sagas + i) for i in range(count)]
        fixed = EngineResult()
        await publish_at_rate(publisher, rate_keys, args.rate, fixed)
        await engine_db.wait_terminal([k for k, _ in rate_keys], timeout=args.timeout)
        await engine_db.collect(fixed)

        orch_pid = procs.procs["orchestrator"].pid
        return {
            "saturation": {
                **_phase(sat.statuses, sat.seconds, sat.latencies_ms, args.sagas),
                "terminal": sat.terminal,
                "engine_latency_ms": percentiles(sat.engine_latencies_ms),
            },
            "rate": {
                **_phase(fixed.statuses, fixed.seconds, fixed.latencies_ms, count),
                "terminal": fixed.terminal,
                "target_rate": args.rate,
                "engine_latency_ms": percentiles(fixed.engine_latencies_ms),
            },
            "cpu_s_per_saga": {k: v / args.sagas for k, v in cpu.items()},
            "cpu_visible": meter.visible,
            "pg_xacts_per_saga": {
                "engine_db": (x1 - x0 - own) / args.sagas,
                "participant_db": (p1 - p0) / args.sagas,
                "write_xids_all_dbs": (xid1 - xid0) / args.sagas,
            },
            "orchestrator_peak_rss_mb": peak_rss_mb(orch_pid),
        }
    except BaseException:
        for name in list(procs.procs):
            print(f"--- {name} log tail ---\n{procs.log_tail(name)}")
        raise
    finally:
        await publisher.close()
        await engine_db.close()
        procs.stop_all()


async def run_floor(url: str, args: argparse.Namespace) -> dict[str, Any]:
    await ensure_database(url)
    dsn = _dsn(url)
    await floor.create(dsn)
    sat = await floor.run(dsn, list(range(args.sagas)))
    count = int(args.rate * args.rate_seconds)
    fixed = await floor.run(dsn, list(range(args.sagas, args.sagas + count)), rate=args.rate)
    return {
        "saturation": {
            **_phase(sat.statuses, sat.seconds, sat.latencies_ms, args.sagas),
            "terminal": sum(sat.statuses.values()),
        },
        "rate": {
            **_phase(fixed.statuses, fixed.seconds, fixed.latencies_ms, count),
            "terminal": sum(fixed.statuses.values()),
            "target_rate": args.rate,
        },
    }


async def drop(urls: dict[str, str]) -> None:
    maintenance = make_url(_dsn(urls[""])).set(database="postgres").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(maintenance, autocommit=True) as conn:
        for url in urls.values():
            name = make_url(url).database
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def report(figures: dict[str, Any]) -> str:
    eng, flo = figures["engine"], figures["floor"]
    rows: list[list[str]] = []

    def row(label: str, e: Any, f: Any, digits: int = 1) -> None:
        rows.append([label, _f(e, digits), _f(f, digits), _ratio(e, f) if f is not None else ""])

    for phase, title in (("saturation", "saturation"), ("rate", f"at {figures['rate']:g}/s")):
        row(f"{title}: sagas/s", eng[phase]["sagas_per_s"], flo[phase]["sagas_per_s"])
        row(f"{title}: steps/s", eng[phase]["steps_per_s"], flo[phase]["steps_per_s"])
        for p in ("p50", "p95", "p99"):
            row(
                f"{title}: {p} ms end to end",
                eng[phase]["latency_ms"][p],
                flo[phase]["latency_ms"][p],
            )
        rows.append(
            [
                f"{title}: terminal",
                f"{eng[phase]['terminal']}/{eng[phase]['sagas']}",
                f"{flo[phase]['terminal']}/{flo[phase]['sagas']}",
                "",
            ]
        )
    for name, value in eng["cpu_s_per_saga"].items():
        row(f"CPU ms/saga: {name}", value * 1000, None, 2)
    for name, visible in eng["cpu_visible"].items():
        if not visible:
            rows.append([f"CPU ms/saga: {name}", "not visible", "", ""])
    for name, value in eng["pg_xacts_per_saga"].items():
        row(f"PG transactions/saga: {name}", value, 4.0 if name == "engine_db" else None, 2)
    row("orchestrator peak RSS MB", eng["orchestrator_peak_rss_mb"], None)
    return render_table(["figure", "engine", "floor", "engine/floor"], rows)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    run_id = uuid.uuid4().hex[:8]
    urls = _urls(settings, run_id)
    log_dir = Path(tempfile.mkdtemp(prefix="saga-bench-"))
    print(
        f"bench {run_id}: {args.sagas} sagas at saturation, {args.rate:g}/s for "
        f"{args.rate_seconds:g}s; logs in {log_dir}",
        flush=True,
    )
    try:
        engine = await run_engine(settings, urls, args, log_dir)
        print("engine done; running the floor ...", flush=True)
        floor_figures = await run_floor(urls["_floor"], args)
    finally:
        if not args.keep:
            await drop(urls)
    return {
        "run_id": run_id,
        "sagas": args.sagas,
        "rate": args.rate,
        "rate_seconds": args.rate_seconds,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": engine,
        "floor": floor_figures,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--sagas", type=int, default=2000, help="sagas at saturation (2000)")
    parser.add_argument("--rate", type=float, default=50.0, help="fixed arrival rate, sagas/s")
    parser.add_argument("--rate-seconds", type=float, default=10.0, help="fixed-rate phase length")
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline per phase, s")
    parser.add_argument(
        "--stats-wait",
        type=float,
        default=11.0,
        help="seconds to let backends report to pg_stat_database before reading it (11)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases")
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> None:
    args = parse(argv)
    figures = asyncio.run(main(args))
    print()
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    cli()
