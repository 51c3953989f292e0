"""The growth bench's figures as text tables: one row per level, then the memory readings."""

from __future__ import annotations

from typing import Any

from adapters.text_table import render_table
from bench.growth_queries import KINDS, SEARCH_KINDS

STATUS_KINDS = [k for k in KINDS if k not in SEARCH_KINDS]


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _pair(figures: dict[str, Any]) -> str:
    return f"{_f(figures['p50'])} / {_f(figures['p99'])}"


def _level(lv: dict[str, Any]) -> list[str]:
    sat, ratio = lv["saturation"], lv["sagas_per_s_vs_level_0"]
    return [
        f"{lv['finished']:,}",
        _f(lv["seed_seconds"] + lv["vacuum_seconds"]),
        _f(lv["database_mb"], 0),
        _f(sat["sagas_per_s"]),
        " ".join(_f(rate) for rate in lv["sagas_per_s_rounds"]),
        "-" if ratio is None else f"{ratio:.2f}x",
        _pair(sat["latency_ms"]),
        _f(sat["cpu_ms_per_saga"].get("orchestrator")),
    ]


def _queries(lv: dict[str, Any], kinds: list[str] | tuple[str, ...]) -> list[str]:
    return [f"{lv['finished']:,}", *(_pair(lv["queries_ms"][kind]) for kind in kinds)]


def _plans(levels: list[dict[str, Any]]) -> list[str]:
    """Each level's plan of each search kind: its nodes and its execution time."""
    return [
        f"{lv['finished']:,} {kind}: {' > '.join(plan['nodes'])} ({plan['execution_ms']:.2f} ms)"
        for lv in levels
        for kind, plan in lv.get("search_plans", {}).items()
    ]


def _memory(memory: dict[str, Any]) -> list[str]:
    readings = (
        ("idle", "idle, before the starts"),
        ("in_flight", "all in flight"),
        ("after_settle", f"{memory['settle_seconds']:g}s later"),
    )
    return [
        f"{memory['reached']:,}/{memory['sagas']:,} sagas in flight after "
        f"{memory['seconds_to_reach']:.1f}s ({_f(memory['starts_per_s'])} starts/s)",
        render_table(
            ["orchestrator", "VmRSS MB", "VmHWM MB"],
            [[label, _f(memory[k]["rss_mb"]), _f(memory[k]["hwm_mb"])] for k, label in readings],
        ),
    ]


def report(figures: dict[str, Any]) -> str:
    levels = figures["levels"]
    text = [
        render_table(
            [
                *("finished", "seed s", "db MB", "sagas/s", "each round", "vs 0"),
                *("e2e p50 / p99 ms", "orchestrator CPU ms/saga"),
            ],
            [_level(lv) for lv in levels],
        ),
        f"(saturation, {figures['sagas']:,} sagas per round: the median of "
        f"{figures['rounds']} rounds; seed s includes VACUUM ANALYZE)",
        "",
        render_table(
            ["finished", *(f"{kind} ms" for kind in STATUS_KINDS)],
            [_queries(lv, STATUS_KINDS) for lv in levels],
        ),
        f"(status queries, p50 / p99 over up to {figures['lookups']} calls each)",
        "",
        render_table(
            ["finished", *(f"{kind} ms" for kind in SEARCH_KINDS)],
            [_queries(lv, SEARCH_KINDS) for lv in levels],
        ),
        "(search field queries, the first page: p50 / p99 as above)",
        *_plans(levels),
    ]
    if figures["in_flight"]:
        text += ["", *_memory(figures["in_flight"])]
    text.append(f"\nrun took {figures['seconds']:.0f}s")
    return "\n".join(text)
