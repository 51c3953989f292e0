"""`python -m bench.run` end to end on a tiny load: it runs, writes its figures, and every saga
ends. No timing is asserted: figures belong to the bench, not to tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.bench_cli import run_bench
from tests.fixtures.fleet import FLEET

pytestmark = [pytest.mark.e2e, FLEET, pytest.mark.timeout(120)]


def test_bench_runs_and_every_saga_ends(tmp_path: Path) -> None:
    figures, _ = run_bench(
        tmp_path,
        *("--sagas", "40", "--rate", "20", "--rate-seconds", "2"),
        # The peers need optional packages (.[bench]): tests/e2e/test_bench_peers.py.
        *("--peers", "none", "--order-sagas", "20"),
    )
    engine, floor = figures["engine"], figures["floor"]
    for side in (engine, floor):
        for phase in ("saturation", "rate"):
            assert {"sagas_per_s", "steps_per_s", "latency_ms", "terminal"} <= set(side[phase])
            assert set(side[phase]["latency_ms"]) == {"p50", "p95", "p99"}
    assert engine["saturation"]["terminal"] == 40
    assert engine["saturation"]["statuses"] == {"completed": 36, "compensated": 4}
    assert engine["rate"]["terminal"] == 40
    assert floor["saturation"]["statuses"] == {"completed": 36, "compensated": 4}
    assert {"orchestrator", "participant"} <= set(engine["cpu_s_per_saga"])
    assert {"engine_db", "participant_db"} <= set(engine["pg_xacts_per_saga"])
    assert engine["orchestrator_peak_rss_mb"] is not None
    assert set(engine["step_latency_ms"]["saturation"]) == {"a", "b", "c"}
    order = engine["order"]
    assert order["terminal"] == 20
    assert order["statuses"] == {"completed": 18, "compensated": 2}  # two declined cards
    assert set(order["step_latency_ms"]) == {
        "reserve_credit",
        "reserve_stock",
        "charge_payment",
        "notify_customer",
    }
