"""A fleet of `saga run` processes on one database and broker prefix, and the chaos that kills
them: SIGKILL to a random member every so often, restarted a moment later. Seeded, so the
schedule of a failing run can be replayed (the timing of the processes cannot)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

from examples.processes import Processes


@dataclass(frozen=True)
class Kill:
    name: str
    at: float  # seconds since the chaos began
    down_for: float  # until its restart
    alive_after: int  # members left running by this kill


@dataclass
class Fleet:
    procs: Processes
    size: int
    seed: int
    # Seconds between two kills, and how long a killed member stays down.
    kill_every: tuple[float, float] = (0.5, 1.5)
    down_for: tuple[float, float] = (0.2, 1.5)
    kills: list[Kill] = field(default_factory=list)
    # Members that exited without being killed: `saga run` crashed by itself.
    crashed: dict[str, int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [f"orchestrator-{i}" for i in range(self.size)]
        self._rng = random.Random(self.seed)
        self._down: set[str] = set()
        self._restarts: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        for name in self.names:
            self.procs.start_orchestrator(name)

    def alive(self) -> list[str]:
        return [n for n in self.names if n not in self._down and self.procs.alive(n)]

    async def chaos(self, stop: asyncio.Event) -> None:
        """Kill a random running member every `kill_every` until `stop` is set, never the last
        one running; each comes back after `down_for`. Returns with every member running."""
        began = time.monotonic()
        try:
            while not await _wait(stop, self._rng.uniform(*self.kill_every)):
                self._note_crashes()
                alive = self.alive()
                if len(alive) < 2:
                    continue
                victim = self._rng.choice(alive)
                down = self._rng.uniform(*self.down_for)
                self.procs.kill(victim)
                self._down.add(victim)
                self.kills.append(Kill(victim, time.monotonic() - began, down, len(alive) - 1))
                task = asyncio.create_task(self._restart(victim, down))
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)
        finally:
            await asyncio.gather(*self._restarts)
        self._note_crashes()

    async def _restart(self, name: str, after: float) -> None:
        await asyncio.sleep(after)  # the chaos schedule, not a wait for a condition
        self.procs.start_orchestrator(name)
        self._down.discard(name)

    def _note_crashes(self) -> None:
        for name in self.names:
            proc = self.procs.procs.get(name)
            if name not in self._down and proc is not None and proc.poll() is not None:
                self.crashed[name] = proc.returncode


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Whether `stop` was set within `seconds`."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
