"""The bench saga as a Celery 5 chain: a | b | c, and on c's failure undo_b then undo_a.

Each task does its one tiny write into `peer_writes` (bench/peers/writes.py). The chain passes
the saga's number from task to task; c carries an error callback, an immutable chain
undo_b -> undo_a, which Celery publishes as two more tasks when c fails. Broker RabbitMQ on a
queue and exchange named for the run, result backend PostgreSQL (SQLAlchemy `db+` backend),
`acks_late`. The worker is `celery -A bench.peers.celery_chain worker`, a subprocess.

The worker configures itself from the BENCH_CELERY_* variables the bench passes it; the bench
process configures the same app with `configure()` to publish.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import psycopg
from celery import Celery, chain
from sqlalchemy.engine import make_url

from adapters.rabbitmq.connection import connect, open_channel
from adapters.settings import Settings
from bench.peers import PeerRun, WorkerCpu
from bench.peers import writes as peer_writes
from bench.sagas import fails
from examples.demo import wait_for_consumers
from examples.processes import Processes

# Chosen by measurement on 2 cores (bench/README.md): prefork with 2 processes.
POOL, CONCURRENCY = "prefork", 2

app = Celery("bench_peer", set_as_current=False)
_local = threading.local()  # one connection per pool process or thread, opened on first use


def configure(broker: str, backend: str, dsn: str, queue: str) -> None:
    app.conf.update(
        broker_url=broker,
        result_backend=backend,
        task_acks_late=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        # No remote control, events or gossip: nothing but the run's own queue on the broker.
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        bench_dsn=dsn,
    )


if "BENCH_CELERY_QUEUE" in os.environ:  # the worker subprocess
    configure(
        os.environ["BENCH_CELERY_BROKER"],
        os.environ["BENCH_CELERY_BACKEND"],
        os.environ["BENCH_CELERY_DSN"],
        os.environ["BENCH_CELERY_QUEUE"],
    )


class BenchFailure(Exception):
    """c's non-retryable failure: Celery retries nothing unless told to, so it is final."""


def _write(n: int, command: str) -> int:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(app.conf.bench_dsn, autocommit=True)
    conn.execute(peer_writes.INSERT_SQL, (n, command))
    return n


@app.task(name="bench.a")
def a(n: int) -> int:
    return _write(n, "a")


@app.task(name="bench.b")
def b(n: int) -> int:
    return _write(n, "b")


@app.task(name="bench.c")
def c(n: int) -> int:
    if fails(n):
        raise BenchFailure(f"saga {n} fails at c")
    return _write(n, "c")


@app.task(name="bench.undo_b")
def undo_b(n: int) -> int:
    return _write(n, "undo_b")


@app.task(name="bench.undo_a")
def undo_a(n: int) -> int:
    return _write(n, "undo_a")


def start(n: int) -> None:
    undo = chain(undo_b.si(n), undo_a.si(n))
    chain(a.s(n), b.s(), c.s().on_error(undo)).apply_async()


def _queue(run_id: str) -> str:
    return f"bench-celery-{run_id}"


async def _drop_queue(settings: Settings, name: str) -> None:
    connection = await connect(settings.amqp_url)
    try:
        channel = await open_channel(connection)
        await channel.queue_delete(name)
        await channel.exchange_delete(name)
    finally:
        await connection.close()


async def bench(
    url: str,
    phases: list[tuple[list[int], float | None]],
    *,
    settings: Settings,
    run_id: str,
    timeout: float,
    log_dir: Path,
    pool: str = POOL,
    concurrency: int = CONCURRENCY,
) -> PeerRun:
    """Start a worker, run each phase (numbers, rate or None), stop the worker. CPU is
    measured over the first phase (saturation), as for the engine."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    backend = "db+" + make_url(url).set(drivername="postgresql+psycopg").render_as_string(
        hide_password=False
    )
    queue = settings.amqp_prefix + _queue(run_id)
    await peer_writes.create(dsn)
    configure(settings.amqp_url, backend, dsn, queue)
    procs = Processes(
        env={
            "BENCH_CELERY_BROKER": settings.amqp_url,
            "BENCH_CELERY_BACKEND": backend,
            "BENCH_CELERY_DSN": dsn,
            "BENCH_CELERY_QUEUE": queue,
        },
        log_dir=log_dir,
    )
    out = PeerRun(worker=f"worker pool {pool}, concurrency {concurrency}")
    try:
        procs.start(
            "celery",
            [
                *("-m", "celery", "-A", "bench.peers.celery_chain", "worker"),
                *("-P", pool, "-c", str(concurrency), "-Q", queue, "-n", f"{queue}@%h"),
                *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                *("--loglevel", "WARNING"),
            ],
        )
        await wait_for_consumers(settings, [_queue(run_id)])  # it adds the prefix
        for i, (numbers, rate) in enumerate(phases):
            meter = WorkerCpu(procs.procs["celery"].pid) if i == 0 else None
            if meter is not None:
                meter.start()
            started = await _publish(numbers, rate)
            result = await peer_writes.wait_and_collect(dsn, started, timeout)
            if meter is not None:
                out.cpu_s = meter.stop()
                out.cpu_visible = meter.visible
            out.phases.append(result)
        return out
    except BaseException:
        print(f"--- celery worker log tail ---\n{procs.log_tail('celery')}")
        raise
    finally:
        procs.stop_all()
        app.pool.force_close_all()
        await _drop_queue(settings, queue)


async def _publish(numbers: list[int], rate: float | None) -> dict[int, float]:
    # apply_async blocks on the broker socket for a moment (no publisher confirms, Celery's
    # default); nothing else runs on this event loop meanwhile, so it is called in place.
    async def start_one(n: int) -> None:
        start(n)

    return await peer_writes.start_all(numbers, start_one, rate)
