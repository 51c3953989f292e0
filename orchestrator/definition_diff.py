"""What changed between two documents of one saga version (`Saga.document()`): the lines a
refused registration prints, so the author sees the edit that needs a new version instead of
two fingerprints. Pure."""

from __future__ import annotations

import json
from typing import Any

# Saga-level parts of the document, besides the steps; a change in any needs a new version.
_SAGA_PARTS = ("input_schema", "deadline", "compensation_deadline", "locks", "output", "search")
_MAX_VALUE = 80


def changes(registered: dict[str, Any], loaded: dict[str, Any]) -> list[str]:
    """One line per difference, saga-level first, then steps by name: added, removed,
    moved, and each option that differs (`old -> new`)."""
    found = [
        "the input model's schema changed"
        if part == "input_schema"
        else f"search: {_fields(registered.get(part))} -> {_fields(loaded.get(part))}"
        if part == "search"
        else f"{part}: {_show(registered.get(part))} -> {_show(loaded.get(part))}"
        for part in _SAGA_PARTS
        if registered.get(part) != loaded.get(part)
    ]
    before = {s["name"]: s for s in registered.get("steps", [])}
    after = {s["name"]: s for s in loaded.get("steps", [])}
    found += [f"step {name!r} added" for name in after if name not in before]
    found += [f"step {name!r} removed" for name in before if name not in after]
    kept_before = [n for n in before if n in after]
    kept_after = [n for n in after if n in before]
    if kept_before != kept_after:
        found.append(f"steps reordered: {kept_before} -> {kept_after}")
    for name in kept_after:
        old, new = before[name], after[name]
        for option in sorted(old.keys() | new.keys()):
            if old.get(option) != new.get(option):
                found.append(
                    f"step {name!r}: {option} {_show(old.get(option))} -> {_show(new.get(option))}"
                )
    return found


def _fields(search: list[dict[str, Any]] | None) -> str:
    """Search fields as `customer_id (text), charge_id (output.charge_id, number)`."""
    if not search:
        return "none"
    shown = []
    for f in search:
        path = f["path"] if f["source"] == "input" else f"{f['source']}.{f['path']}"
        at = "" if path == f["name"] else f"{path}, "
        shown.append(f"{f['name']} ({at}{f['kind']})")
    return ", ".join(shown)


def _show(value: Any) -> str:
    text = "unset" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."
