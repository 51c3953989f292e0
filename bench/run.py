"""`python -m bench.run`: the bench saga through real `saga run` + the bench participant, and the
same workload on the hand-written floor, side by side. See bench/README.md.

Over 400 lines for a reason: it is the script of one run, phase after phase (databases,
processes, saturation, fixed rate, floor, peers, report); the phases' parts live in the other
bench modules."""

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
    delete_topology,
    next_xid,
    publish_all,
    publish_at_rate,
    xact_commits,
)
from bench.order import SERVICES as ORDER_SERVICES
from bench.order import run_order
from bench.peers import PEERS, PeerMissing, PeerRun, select
from bench.stats import CpuMeter, peak_rss_mb, percentiles
from examples.demo import wait_for_consumers
from examples.processes import Processes


def _urls(settings: Settings, run_id: str) -> dict[str, str]:
    base = make_url(settings.database_url)
    return {
        suffix: base.set(database=f"bench_{run_id}{suffix}").render_as_string(hide_password=False)
        for suffix in ("", "_p", "_floor", "_order", "_shop", *(f"_{name}" for name in PEERS))
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
            "step_latency_ms": {
                phase: {step: percentiles(ms) for step, ms in sorted(r.step_latencies_ms.items())}
                for phase, r in (("saturation", sat), ("rate", fixed))
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
        procs.print_log_tails()
        raise
    finally:
        await publisher.close()
        await engine_db.close()
        procs.stop_all()


def _numbers(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """The sagas of the saturation phase and of the fixed-rate phase, numbered apart."""
    count = int(args.rate * args.rate_seconds)
    return list(range(args.sagas)), list(range(args.sagas, args.sagas + count))


def _figures(
    sat: floor.FloorResult, fixed: floor.FloorResult, args: argparse.Namespace
) -> dict[str, Any]:
    """The floor's and the peers' figures, in the engine's shape."""
    saturation, rate = _numbers(args)
    ended = ("completed", "compensated")
    return {
        "saturation": {
            **_phase(sat.statuses, sat.seconds, sat.latencies_ms, len(saturation)),
            "terminal": sum(sat.statuses.get(s, 0) for s in ended),
        },
        "rate": {
            **_phase(fixed.statuses, fixed.seconds, fixed.latencies_ms, len(rate)),
            "terminal": sum(fixed.statuses.get(s, 0) for s in ended),
            "target_rate": args.rate,
        },
    }


async def run_floor(url: str, args: argparse.Namespace) -> dict[str, Any]:
    await ensure_database(url)
    dsn = _dsn(url)
    await floor.create(dsn)
    saturation, rate = _numbers(args)
    sat = await floor.run(dsn, saturation)
    fixed = await floor.run(dsn, rate, rate=args.rate)
    return _figures(sat, fixed, args)


async def run_peer(
    name: str, url: str, args: argparse.Namespace, *, settings: Settings, run_id: str, log_dir: Path
) -> dict[str, Any]:
    """One peer, saturation then fixed rate, on its own fresh database."""
    await ensure_database(url)
    saturation, rate = _numbers(args)
    phases: list[tuple[list[int], float | None]] = [(saturation, None), (rate, args.rate)]
    run: PeerRun
    # Imported here: the peers' packages are optional (pip install -e .[bench]).
    if name == "celery":
        from bench.peers import celery_chain

        run = await celery_chain.bench(
            url, phases, settings=settings, run_id=run_id, timeout=args.timeout, log_dir=log_dir
        )
    else:
        from bench.peers import dbos_flow

        run = await dbos_flow.bench(url, phases, timeout=args.timeout, log_dir=log_dir)
    sat, fixed = run.phases
    return {
        **_figures(sat, fixed, args),
        "worker": run.worker,
        "cpu_s_per_saga": {k: v / len(saturation) for k, v in run.cpu_s.items()},
        "cpu_visible": run.cpu_visible,
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
    peers: dict[str, Any] = figures.get("peers", {})
    others = {"floor": flo, **peers}  # each gets a column and an engine/<name> ratio column
    rows: list[list[str]] = []

    def row(label: str, e: Any, by_side: dict[str, Any], digits: int = 1) -> None:
        """A figure: the engine's value, each other side's, then engine/side where both are."""
        values = [by_side.get(name) for name in others]
        ratios = ["" if e is None or v is None else _ratio(e, v) for v in values]
        rows.append([label, _f(e, digits), *(_f(v, digits) for v in values), *ratios])

    def text_row(label: str, e: str, by_side: dict[str, str]) -> None:
        rows.append([label, e, *(by_side.get(name, "") for name in others), *([""] * len(others))])

    for phase, title in (("saturation", "saturation"), ("rate", f"at {figures['rate']:g}/s")):
        for key in ("sagas_per_s", "steps_per_s"):
            label = f"{title}: {key.replace('_per_s', '/s')}"
            row(label, eng[phase][key], {n: side[phase][key] for n, side in others.items()})
        for p in ("p50", "p95", "p99"):
            row(
                f"{title}: {p} ms end to end",
                eng[phase]["latency_ms"][p],
                {n: side[phase]["latency_ms"][p] for n, side in others.items()},
            )
        text_row(
            f"{title}: terminal",
            f"{eng[phase]['terminal']}/{eng[phase]['sagas']}",
            {n: f"{side[phase]['terminal']}/{side[phase]['sagas']}" for n, side in others.items()},
        )
    # CPU: the engine's processes, the peers' worker; PostgreSQL and RabbitMQ for every side.
    cpu = {"engine": eng["cpu_s_per_saga"]} | {n: p["cpu_s_per_saga"] for n, p in peers.items()}
    names = list(dict.fromkeys(name for spent in cpu.values() for name in spent))
    for name in names:
        row(
            f"CPU ms/saga: {name}",
            _ms(cpu["engine"].get(name)),
            {n: _ms(spent.get(name)) for n, spent in cpu.items() if n != "engine"},
            2,
        )
    if peers:
        row(
            "CPU ms/saga: total",
            _ms(sum(cpu["engine"].values())),
            {n: _ms(sum(spent.values())) for n, spent in cpu.items() if n != "engine"},
            2,
        )
    visible = {"engine": eng["cpu_visible"]} | {n: p["cpu_visible"] for n, p in peers.items()}
    for name in names:
        hidden = {side for side, seen in visible.items() if seen.get(name) is False}
        if hidden:
            text_row(
                f"CPU ms/saga: {name}",
                "not visible" if "engine" in hidden else "",
                {side: "not visible" for side in hidden if side != "engine"},
            )
    for name, value in eng["pg_xacts_per_saga"].items():
        row(
            f"PG transactions/saga: {name}", value, {"floor": 4.0} if name == "engine_db" else {}, 2
        )
    row("orchestrator peak RSS MB", eng["orchestrator_peak_rss_mb"], {})
    rate_title = f"at {figures['rate']:g}/s"
    for phase, title in (("saturation", "saturation"), ("rate", rate_title)):
        for step, ms in eng["step_latency_ms"][phase].items():
            row(f"{title}: step {step} p50/p99 ms", ms["p50"], {})
            rows[-1][1] = f"{_f(ms['p50'])} / {_f(ms['p99'])}"
    order = eng.get("order")
    if order:
        row("order saga: sagas/s", order["sagas_per_s"], {})
        row("order saga: steps/s", order["steps_per_s"], {})
        for p in ("p50", "p95", "p99"):
            row(f"order saga: {p} ms end to end", order["latency_ms"][p], {})
        for step, ms in order["step_latency_ms"].items():
            row(f"order saga: step {step} p50/p99 ms", ms["p50"], {})
            rows[-1][1] = f"{_f(ms['p50'])} / {_f(ms['p99'])}"
        for name, value in order["cpu_s_per_saga"].items():
            row(f"order saga: CPU ms/saga {name}", _ms(value), {}, 2)
        text_row("order saga: terminal", f"{order['terminal']}/{order['sagas']}", {})
    table = render_table(
        ["figure", "engine", *others, *(f"engine/{name}" for name in others)], rows
    )
    workers = [f"{name}: {side['worker']}" for name, side in peers.items()]
    return "\n".join([table, *workers])


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


async def main(args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    # Queues of its own: two bench runs at once (or a demo) must not take each other's messages.
    settings = Settings().model_copy(update={"amqp_prefix": f"bench-{run_id}."})
    urls = _urls(settings, run_id)
    log_dir = Path(tempfile.mkdtemp(prefix="saga-bench-"))
    print(
        f"bench {run_id}: {args.sagas} sagas at saturation, {args.rate:g}/s for "
        f"{args.rate_seconds:g}s; logs in {log_dir}",
        flush=True,
    )
    try:
        engine = await run_engine(settings, urls, args, log_dir)
        if args.order_sagas:
            print(f"running {args.order_sagas} order sagas ...", flush=True)
            engine["order"] = await run_order(
                settings,
                engine_url=urls["_order"],
                shop_url=urls["_shop"],
                args=args,
                log_dir=log_dir,
                dsn=_dsn(urls["_order"]),
            )
        print("engine done; running the floor ...", flush=True)
        floor_figures = await run_floor(urls["_floor"], args)
        peers: dict[str, Any] = {}
        for name in args.peer_names:
            print(f"running the {name} peer ...", flush=True)
            began = time.monotonic()
            peers[name] = await run_peer(
                name, urls[f"_{name}"], args, settings=settings, run_id=run_id, log_dir=log_dir
            )
            peers[name]["bench_seconds"] = time.monotonic() - began
    finally:
        if not args.keep:
            await drop(urls)
            await delete_topology(settings, ["bench", *ORDER_SERVICES])
    return {
        "run_id": run_id,
        "sagas": args.sagas,
        "rate": args.rate,
        "rate_seconds": args.rate_seconds,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": engine,
        "floor": floor_figures,
        "peers": peers,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--sagas", type=int, default=5000, help="sagas at saturation (5000)")
    parser.add_argument(
        "--order-sagas",
        type=int,
        default=1000,
        help="order sagas through the example shop, at saturation (1000; 0 skips them)",
    )
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
    parser.add_argument(
        "--peers",
        help=f"peers to run beside the engine: comma-separated among {', '.join(PEERS)}, or "
        "'none' (default: every peer whose package is installed: pip install -e .[bench])",
    )
    args = parser.parse_args(argv)
    try:
        args.peer_names = select(args.peers)
    except PeerMissing as exc:
        parser.error(str(exc))
    return args


def cli(argv: list[str] | None = None) -> None:
    args = parse(argv)
    figures = asyncio.run(main(args))
    print()
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    cli()
