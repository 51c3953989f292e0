"""Durations as operators write them: `30d`, `12h`, `90m`, `45s`, `2w`, or bare seconds."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> timedelta:
    """`30d` -> 30 days. A number without a unit is seconds. Raises ValueError otherwise."""
    found = _DURATION.match(text.lower())
    if found is None:
        raise ValueError(
            f"not a duration: {text!r} (a number and a unit s, m, h, d or w, e.g. 30d)"
        )
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2) or "s"])
