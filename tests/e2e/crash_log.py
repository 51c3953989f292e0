"""What a process armed with SAGA_FAULT said before it died: the `fault_point_crash` lines
of its JSON log, so a crash test can tell its planned crash from any other death."""

from __future__ import annotations

import json
from pathlib import Path


def fault_point_crashes(log: Path) -> list[str]:
    """The fault points at which the process (or processes) writing `log` said it crashed."""
    points = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "fault_point_crash":
            points.append(str(entry.get("point")))
    return points
