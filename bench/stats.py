"""What the bench measures outside the engine: percentiles, and CPU and memory from /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def percentiles(values_ms: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 by nearest rank; None when there is nothing to rank."""
    if not values_ms:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values_ms)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered) + 0.5) - 1))]

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of a process (plus its reaped children's when asked); 0 when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = text.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def pids(name: str) -> list[int]:
    """Processes whose name is exactly `name` (pgrep -x); empty when none is visible."""
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def oldest_pid(name: str) -> int | None:
    found = subprocess.run(["pgrep", "-o", "-x", name], capture_output=True, text=True, check=False)
    return int(found.stdout) if found.stdout.strip() else None


class CpuMeter:
    """CPU seconds of named process groups between `start()` and `stop()`."""

    def __init__(self, own: dict[str, int]) -> None:
        self.own = own  # name -> pid of the subprocesses this bench started
        self.visible: dict[str, bool] = {}
        self._before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.own.items()}
        # PostgreSQL: every process of the cluster, plus what the postmaster reaped from
        # backends that exited in between (cutime/cstime).
        postgres = pids("postgres")
        postmaster = oldest_pid("postgres")
        self.visible["postgres"] = bool(postgres)
        if postgres:
            now["postgres"] = sum(cpu_seconds(p) for p in postgres if p != postmaster) + (
                cpu_seconds(postmaster, children=True) if postmaster else 0.0
            )
        beam = pids("beam.smp")
        self.visible["rabbitmq"] = bool(beam)
        if beam:
            now["rabbitmq"] = sum(cpu_seconds(p, children=True) for p in beam)
        return now

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> dict[str, float]:
        after = self._read()
        return {k: after[k] - self._before[k] for k in after if k in self._before}
