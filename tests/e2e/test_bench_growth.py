"""`python -m bench.growth` end to end on tiny sizes: it seeds, runs, looks sagas up, fills
the orchestrator with sagas in flight, and writes every figure. Timings are the bench's
business, never asserted here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.fleet import FLEET

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(150)]

KINDS = {
    *("get", "find_key", "find_key_any", "history", "http_get", "list"),
    *("search_eq", "search_range", "search_wide"),
}


def test_growth_bench_runs_and_every_saga_ends(tmp_path: Path) -> None:
    out = tmp_path / "growth.json"
    # A session of its own: should SIGTERM not unwind it in time, its `saga run` and
    # participant are killed with it instead of living on with nobody to stop them.
    bench = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.growth", "--finished", "0,2000"),
            *("--sagas", "40", "--in-flight", "200", "--json", str(out)),
            # One round, 50 lookups per kind, 1 s of sweeps: enough to prove every part
            # runs and every kind finds its saga, within a minute on a busy machine (an
            # HTTP call on a kept-alive connection waits out a delayed ACK, ~40 ms).
            *("--rounds", "1", "--lookups", "50", "--settle", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = bench.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        bench.terminate()  # unwinds: stops its processes, drops its databases
        try:
            output, _ = bench.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(bench.pid, signal.SIGKILL)
            output, _ = bench.communicate()
    assert bench.returncode == 0, output[-6000:]
    figures = json.loads(out.read_text())

    assert [level["finished"] for level in figures["levels"]] == [0, 2000]
    for level in figures["levels"]:
        assert len(level["rounds"]) == 1
        sat = level["saturation"]
        assert sat["terminal"] == 40
        assert sat["statuses"] == {"completed": 36, "compensated": 4}
        assert sat["sagas_per_s"] is not None
        assert set(sat["latency_ms"]) == {"p50", "p95", "p99"}
        assert level["sagas_per_s_vs_level_0"] is not None
        assert set(level["queries_ms"]) == KINDS
        for kind in KINDS:
            assert level["queries_ms"][kind]["n"] == figures["lookups"]
            assert level["queries_ms"][kind]["p99"] is not None
        assert level["seed_seconds"] is not None
        assert set(level["search_plans"]) == {"search_eq", "search_range", "search_wide"}
    seeded = figures["levels"][1]
    # 2,000 finished sagas: 1,800 completed with 8 events, 200 compensated with 13.
    assert seeded["history_rows"] == 1800 * 8 + 200 * 13

    memory = figures["in_flight"]
    assert memory["reached"] == memory["sagas"] == 200
    for reading in ("idle", "in_flight", "after_settle"):
        assert memory[reading]["rss_mb"] is not None
        assert memory[reading]["hwm_mb"] is not None
