"""`python -m bench.run --peers NAME` on a tiny load, one test per peer, skipped where the
peer's package is not installed (CI installs `.[dev]` only; the peers are in `.[bench]`).
Every saga must end the way the bench saga says; no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.bench_cli import run_bench

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.mark.parametrize("peer", ["celery", "dbos"])
def test_peer_runs_and_every_saga_ends(peer: str, tmp_path: Path) -> None:
    pytest.importorskip(peer)
    figures, printed = run_bench(
        tmp_path,
        *("--sagas", "20", "--rate", "10", "--rate-seconds", "1"),
        *("--peers", peer, "--order-sagas", "0"),
    )
    assert list(figures["peers"]) == [peer]
    side = figures["peers"][peer]
    assert side["saturation"]["statuses"] == {"completed": 18, "compensated": 2}
    assert side["saturation"]["terminal"] == 20
    assert side["rate"]["statuses"] == {"completed": 9, "compensated": 1}
    for phase in ("saturation", "rate"):
        assert {"sagas_per_s", "steps_per_s", "latency_ms", "terminal"} <= set(side[phase])
        assert set(side[phase]["latency_ms"]) == {"p50", "p95", "p99"}
    assert "worker" in side["cpu_s_per_saga"]
    assert f"engine/{peer}" in printed


def test_asking_for_a_missing_peer_says_how_to_install_it() -> None:
    from bench.peers import installed

    missing = [name for name in ("celery", "dbos") if not installed(name)]
    if not missing:
        pytest.skip("every peer is installed here")
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--peers", missing[0]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "pip install -e .[bench]" in done.stderr
