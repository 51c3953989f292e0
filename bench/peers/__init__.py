"""Peers of the engine in the bench: the same bench saga on Celery and on DBOS Transact.

Their packages are optional (`pip install -e .[bench]`), so nothing here imports them: run.py
asks `available()` / `select()` which peers can run, then imports the peer's module.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from bench.floor import FloorResult
from bench.stats import CpuMeter

# name -> (the package it needs, the module that runs it)
PEERS = {
    "celery": ("celery", "bench.peers.celery_chain"),
    "dbos": ("dbos", "bench.peers.dbos_flow"),
}
INSTALL_HINT = "pip install -e .[bench]"


class PeerMissing(Exception):
    """A peer was asked for by name but its package is not installed."""


def installed(name: str) -> bool:
    return importlib.util.find_spec(PEERS[name][0]) is not None


def available() -> list[str]:
    return [name for name in PEERS if installed(name)]


def select(spec: str | None) -> list[str]:
    """`--peers`: None -> every installed peer; "none" -> no peer; "a,b" -> exactly those."""
    if spec is None:
        return available()
    if spec.strip().lower() == "none":
        return []
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise PeerMissing(f"unknown peer(s) {', '.join(unknown)}: choose from {', '.join(PEERS)}")
    missing = [n for n in names if not installed(n)]
    if missing:
        packages = ", ".join(PEERS[n][0] for n in missing)
        raise PeerMissing(f"--peers {spec}: {packages} not installed; {INSTALL_HINT}")
    return names


@dataclass
class PeerRun:
    worker: str  # how the peer's worker ran, for the report
    phases: list[FloorResult] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # over the first phase
    cpu_visible: dict[str, bool] = field(default_factory=dict)


class WorkerCpu:
    """CPU seconds of a peer's worker process and its children (a prefork pool), summed as
    `worker`, beside PostgreSQL's and RabbitMQ's (bench.stats.CpuMeter)."""

    def __init__(self, pid: int) -> None:
        pids = {"worker": pid}
        for i, child in enumerate(_children(pid)):
            pids[f"worker child {i}"] = child
        self._meter = CpuMeter(pids)
        self.visible = self._meter.visible

    def start(self) -> None:
        self._meter.start()

    def stop(self) -> dict[str, float]:
        spent = self._meter.stop()
        worker = sum(v for k, v in spent.items() if k.startswith("worker"))
        return {"worker": worker, **{k: v for k, v in spent.items() if not k.startswith("worker")}}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]
