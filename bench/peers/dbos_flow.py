"""The bench saga on DBOS Transact: one workflow of three datasource transactions a, b, c; when
c fails the workflow runs undo_b then undo_a, each a transaction too.

Each transaction does its one tiny write into `peer_writes` (bench/peers/writes.py), and DBOS
records the step's outcome in the same commit (its datasource), so a write happens exactly once
even across a crash and recovery. System database and datasource are the run's fresh database.

DBOS runs inside the process that starts its workflows, so the bench runs it in a subprocess
(`child()`) and talks to it over stdin/stdout, one line per message: its CPU is then its own.
Protocol: the child says `ready`; the bench sends `run <json>` per phase, the child answers
`done <json>` with the phase's outcomes; `quit` ends it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.floor import FloorResult
from bench.peers import PeerRun, WorkerCpu
from bench.peers import writes as peer_writes
from bench.sagas import fails

PREFIX = "bench-peer "  # marks protocol lines among whatever else the child prints
# The floor and the engine's participant write at READ COMMITTED; DBOS's datasource default is
# SERIALIZABLE. Insert-only steps cannot conflict, so the weaker level only saves overhead.
ISOLATION = "READ COMMITTED"
# One caller starting workflows one after another is bound by each start's round trip to the
# system database, not by DBOS's capacity; the engine's bench keeps 200 publishes in flight.
START_IN_FLIGHT = 8
# DBOS's executor is unbounded by default: a burst of 1,000 started workflows became ~1,000
# threads fighting over the GIL and 35 pooled connections, 36 ms of CPU per saga and 26
# sagas/s, against 22 ms and 42 sagas/s with 32 threads (same machine, minutes apart).
THREADS = 32


class BenchFailure(Exception):
    """c's failure; a DBOS transaction is not retried on an application error."""


def _build(ds: Any) -> Any:
    """Register the transactions and the workflow on the datasource `ds`; the workflow.

    Synchronous, run by DBOS's thread pool: on 2 cores it did 42-47 sagas/s at 17 ms of CPU
    per saga where the same workflow in async form (async datasource, start_workflow_async)
    did 36 sagas/s at 24-30 ms; the async path hops to threads for its system-database calls.
    """
    from dbos import DBOS

    def insert(n: int, command: str) -> None:
        # The transaction's own session: the write commits with DBOS's record of the step.
        ds.sql_session().execute(
            text("INSERT INTO peer_writes (saga, command) VALUES (:n, :c)"), {"n": n, "c": command}
        )

    @ds.transaction(name="bench.a", isolation_level=ISOLATION)
    def a(n: int) -> None:
        insert(n, "a")

    @ds.transaction(name="bench.b", isolation_level=ISOLATION)
    def b(n: int) -> None:
        insert(n, "b")

    @ds.transaction(name="bench.c", isolation_level=ISOLATION)
    def c(n: int) -> None:
        if fails(n):
            raise BenchFailure(f"saga {n} fails at c")
        insert(n, "c")

    @ds.transaction(name="bench.undo_b", isolation_level=ISOLATION)
    def undo_b(n: int) -> None:
        insert(n, "undo_b")

    @ds.transaction(name="bench.undo_a", isolation_level=ISOLATION)
    def undo_a(n: int) -> None:
        insert(n, "undo_a")

    @DBOS.workflow(name="bench_saga")
    def saga(n: int) -> str:
        a(n)
        b(n)
        try:
            c(n)
        except BenchFailure:
            undo_b(n)
            undo_a(n)
            return "compensated"
        return "completed"

    return saga


async def _serve(url: str, timeout: float) -> None:
    from dbos import DBOS, SQLAlchemyDatasource

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    await peer_writes.create(dsn)
    # Pool sizes stay DBOS's defaults, but not its 30 s pool timeout: at saturation thousands
    # of workflows queue for a connection, and on a busy machine a few waited longer and
    # failed (a transaction that cannot connect is not retried). They wait their turn instead.
    waits = {"pool_timeout": timeout}
    DBOS(
        config={
            "name": "bench",
            "system_database_url": url,
            "log_level": "WARNING",
            "db_engine_kwargs": waits,
            "max_executor_threads": THREADS,
        }
    )
    ds = SQLAlchemyDatasource.create(url, engine_kwargs=waits)
    saga = _build(ds)
    DBOS.launch()

    async def start(n: int) -> None:
        # Returns once the workflow is recorded (a system-database write), its run handed to
        # DBOS's threads: START_IN_FLIGHT such calls at a time, each on a thread.
        await asyncio.to_thread(DBOS.start_workflow, saga, n)

    try:
        _say("ready")
        while line := await asyncio.to_thread(sys.stdin.readline):
            verb, _, arg = line.strip().partition(" ")
            if verb != "run":
                break
            phase = json.loads(arg)
            started = await peer_writes.start_all(
                phase["numbers"], start, phase["rate"], START_IN_FLIGHT
            )
            result = await peer_writes.wait_and_collect(dsn, started, phase["timeout"])
            _say("done " + json.dumps(asdict(result)))
    finally:
        DBOS.destroy()


def _say(line: str) -> None:
    print(PREFIX + line, flush=True)


def child() -> None:
    """The subprocess: `python -c 'from bench.peers.dbos_flow import child; child()' URL
    TIMEOUT`."""
    asyncio.run(_serve(sys.argv[1], float(sys.argv[2])))


async def bench(
    url: str, phases: list[tuple[list[int], float | None]], *, timeout: float, log_dir: Path
) -> PeerRun:
    """Start the DBOS subprocess, run each phase (numbers, rate or None), stop it. CPU is
    measured over the first phase (saturation), as for the engine."""
    sys_url = make_url(url).set(drivername="postgresql+psycopg").render_as_string(False)
    log = (log_dir / "dbos.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", "from bench.peers.dbos_flow import child; child()"),
        *(sys_url, str(timeout)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        limit=1 << 24,  # a phase's outcomes come back on one line
    )
    out = PeerRun(
        worker=f"one process, sync workflows on {THREADS} threads, "
        f"{START_IN_FLIGHT} starts in flight"
    )
    try:
        await asyncio.wait_for(_expect(proc, "ready"), timeout=60)
        for i, (numbers, rate) in enumerate(phases):
            meter = WorkerCpu(proc.pid) if i == 0 else None
            if meter is not None:
                meter.start()
            request = {"numbers": numbers, "rate": rate, "timeout": timeout}
            _send(proc, "run " + json.dumps(request))
            # No deadline here: the child's own wait has one, and starting N sagas one after
            # another takes as long as it takes; a dead child ends the read.
            reply = await _expect(proc, "done")
            if meter is not None:
                # DBOS uses no broker: what RabbitMQ spends meanwhile is someone else's.
                out.cpu_s = {k: v for k, v in meter.stop().items() if k != "rabbitmq"}
                out.cpu_visible = {k: v for k, v in meter.visible.items() if k != "rabbitmq"}
            out.phases.append(FloorResult(**json.loads(reply)))
        _send(proc, "quit")
        await asyncio.wait_for(proc.wait(), timeout=30)
        return out
    except BaseException:
        print(f"--- dbos log tail ---\n{_tail(log_dir / 'dbos.log')}")
        raise
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


def _send(proc: asyncio.subprocess.Process, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")


async def _expect(proc: asyncio.subprocess.Process, verb: str) -> str:
    """The argument of the child's next protocol line, which must be `verb`."""
    assert proc.stdout is not None
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"the DBOS child exited before saying {verb!r}")
        line = raw.decode().rstrip("\n")
        if not line.startswith(PREFIX):
            continue  # something DBOS printed
        said, _, arg = line.removeprefix(PREFIX).partition(" ")
        if said != verb:
            raise RuntimeError(f"the DBOS child said {said!r}, expected {verb!r}")
        return arg


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
