"""Start and stop the real processes of a deployment on this machine: `saga run` replicas, the
example shop's participants, any other program (the shop's Node.js inventory service). Used by
`saga demo` and the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass
class Processes:
    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        """A Python process: `args` are the interpreter's."""
        self.start_program(name, [sys.executable, *args], extra_env)

    def start_program(
        self,
        name: str,
        argv: list[str],
        extra_env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def start_orchestrator(
        self, name: str = "orchestrator", extra_env: dict[str, str] | None = None
    ) -> None:
        self.start(name, ["-m", "adapters.cli", "run"], extra_env)

    def start_shop(
        self,
        name: str = "shop",
        extra_env: dict[str, str] | None = None,
        services: Sequence[str] | None = None,
    ) -> None:
        """The example shop's participants: all four, or those named in `services`."""
        hosted = ["--services", ",".join(services)] if services is not None else []
        self.start(name, ["-m", "examples.shop", *hosted], extra_env)

    def kill(self, name: str) -> None:
        """SIGKILL: no cleanup, no goodbye — what a crash looks like."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def stop_all(self, timeout: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def print_log_tails(self) -> None:
        """Each running process's last log lines on stdout: what a failed run shows."""
        for name in list(self.procs):
            print(f"--- {name} log tail ({self.log_dir}) ---\n{self.log_tail(name)}", flush=True)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
