"""Two releases of the engine on one machine: the previous one, extracted from git into a
directory of its own, and this checkout. Both run on this checkout's virtualenv (the
dependencies are shared); a process of the previous release runs with that directory as its
working directory and PYTHONPATH, so every `adapters`, `orchestrator`, `migrations` and
`examples` module it imports is the previous release's."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from examples.processes import Processes

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE_FILE = Path(__file__).with_name("previous_release.txt")


def previous_release() -> str:
    """The commit recorded in previous_release.txt (its one line that is not a comment)."""
    lines = [
        line.strip()
        for line in PREVIOUS_RELEASE_FILE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if len(lines) != 1:
        raise AssertionError(f"{PREVIOUS_RELEASE_FILE} must hold exactly one commit hash")
    return lines[0]


def extract(commit: str, into: Path) -> Path:
    """`git archive <commit>` unpacked into `into`. A commit missing from the clone (a
    shallow CI checkout) fails loudly: the upgrade test must not pass by not running."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise AssertionError(
            f"the previous release {commit} (tests/upgrade/previous_release.txt) is not in "
            f"this clone of {ROOT}: clone with full history (actions/checkout fetch-depth: 0, "
            "or `git fetch --unshallow`)"
        )
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=subprocess.PIPE
    )
    untar = subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=False)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise AssertionError(f"could not extract {commit} into {into}")
    return into


@dataclass(frozen=True)
class Release:
    name: str
    root: Path

    @property
    def env(self) -> dict[str, str]:
        """What a process of this release runs with, besides the deployment's settings."""
        if self.root == ROOT:
            return {}
        return {"PYTHONPATH": str(self.root)}

    def python(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run `python <args>` of this release to completion (a migration, a probe)."""
        return subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env={**os.environ, **env, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


class ReleaseProcesses(Processes):
    """examples.processes.Processes, each process from the release it is started with."""

    def start_release(
        self, release: Release, name: str, args: list[str], extra_env: dict[str, str] | None = None
    ) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args],
            cwd=release.root,  # `python -m` puts the working directory first on sys.path
            env={**os.environ, **self.env, **(extra_env or {}), **release.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def terminate(self, name: str, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit code of a graceful stop."""
        proc = self.procs.pop(name)
        proc.terminate()
        return proc.wait(timeout=timeout)
