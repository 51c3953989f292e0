"""The run's table: outcomes, the invariants' counts, and how fast the deployment recovered
from each kind of fault.

Recovery, per fault, from the times sagas became terminal (`saga_history.at`, wall clock):
- "back to rate": from the moment the fault began until the start of the first 2-second
  window holding at least 90 % of the offered rate's completions (0 s when throughput never
  dipped: a replica killed while another carried on);
- "first terminal": from the moment the fault was over (process restarted, server up again,
  network healed) until the first saga became terminal after it.
Faults overlap at times (a kill during an outage), so a figure may include another fault's
effect; the maximum is the honest bound."""

from __future__ import annotations

import bisect
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from adapters.text_table import render_table
from tests.chaos.injector import Record
from tests.chaos.invariants import Verdict

WINDOW = 2.0
SHARE = 0.9


@dataclass(frozen=True)
class Recovery:
    kind: str
    count: int
    back_p50: float | None
    back_max: float | None
    first_p50: float | None
    first_max: float | None


def recoveries(records: Sequence[Record], terminal: Sequence[float], rate: float) -> list[Recovery]:
    times = sorted(terminal)
    needed = SHARE * rate * WINDOW
    by_kind: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_kind[record.kind].append(record)
    result = []
    for kind, recs in sorted(by_kind.items()):
        back = [b for r in recs if (b := _back_to_rate(times, r.began, needed)) is not None]
        first = [f for r in recs if (f := _first_after(times, r.ended)) is not None]
        result.append(
            Recovery(
                kind,
                len(recs),
                statistics.median(back) if back else None,
                max(back) if back else None,
                statistics.median(first) if first else None,
                max(first) if first else None,
            )
        )
    return result


def _back_to_rate(times: Sequence[float], began: float, needed: float) -> float | None:
    i = bisect.bisect_left(times, began)
    for start in [began, *times[i:]]:
        inside = bisect.bisect_left(times, start + WINDOW) - bisect.bisect_left(times, start)
        if inside >= needed:
            return start - began
    return None


def _first_after(times: Sequence[float], ended: float) -> float | None:
    i = bisect.bisect_right(times, ended)
    return times[i] - ended if i < len(times) else None


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def table(
    verdict: Verdict,
    recovery: list[Recovery],
    *,
    terminal_after_last_fault: float | None,
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    o = verdict.outcomes
    figures = [
        ("sagas started", str(verdict.started)),
        ("completed", str(o["completed"])),
        ("compensated", str(o["compensated"])),
        ("cancelled", str(o["cancelled"])),
        ("parked (failed)", str(o["failed"])),
        ("not terminal", str(len(verdict.not_terminal))),
        ("lost", str(len(verdict.lost))),
        ("double effects", str(len(verdict.double_effects))),
        ("missing compensations", str(len(verdict.missing_compensations))),
        ("cancelled but notified", str(len(verdict.notified_cancelled))),
        ("history problems", str(len(verdict.history_problems))),
        ("other shop-data problems", str(len(verdict.effect_problems))),
        ("dead-lettered messages", str(len(verdict.dead_letters))),
        ("outcome other than planned", str(len(verdict.unexpected_outcomes))),
        ("all terminal after the last fault", _s(terminal_after_last_fault)),
        *extra,
    ]
    faults = render_table(
        ["fault", "count", "back to rate p50", "max", "first terminal p50", "max"],
        [
            [r.kind, str(r.count), _s(r.back_p50), _s(r.back_max), _s(r.first_p50), _s(r.first_max)]
            for r in recovery
        ],
    )
    return render_table(["figure", "value"], figures) + "\n\n" + faults


def timeline(
    terminal: Sequence[float], records: Sequence[Record], began: float, bucket: float = 5.0
) -> str:
    """Sagas becoming terminal per `bucket` seconds since the first start was offered, with
    the faults that began in each bucket: where throughput dipped, and why."""
    if not terminal:
        return "(no saga became terminal)"
    counts: dict[int, int] = defaultdict(int)
    for t in terminal:
        counts[int((t - began) // bucket)] += 1
    faults: dict[int, list[str]] = defaultdict(list)
    for r in records:
        faults[int((r.began - began) // bucket)].append(r.kind)
    last = max([*counts, *faults])
    rows = [
        [f"{i * bucket:>5.0f} s", str(counts.get(i, 0)), ", ".join(faults.get(i, []))]
        for i in range(min(0, *counts), last + 1)
    ]
    return render_table(["since start", "terminal", "faults that began"], rows)
