"""`python -m bench.run` as the bench tests run it: a tiny load, figures read back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run `bench.run` with `args` (the load, `--peers`, ...); its JSON figures and printed
    report. Fails with the bench's output when it exits non-zero."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.run", *args),
            *("--stats-wait", "0", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures: dict[str, Any] = json.loads(out.read_text())
    return figures, done.stdout
