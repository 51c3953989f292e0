"""Secrets kept out of API responses: the value of any JSON object key named like a secret
(SAGA_REDACT_FIELDS, compared without regard to case) is shown as "***", at any depth of a
saga's input, output, its steps' results, payloads and errors, and its history's details. The
database keeps the real values: participants need them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MASK = "***"


class Redactor:
    def __init__(self, fields: Iterable[str]) -> None:
        self._fields = frozenset(f.strip().lower() for f in fields if f.strip())

    def __call__(self, value: Any) -> Any:
        """A copy of the JSON `value` with secret fields masked (the value itself is left
        alone)."""
        if not self._fields:
            return value
        return self._masked(value)

    def _masked(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: MASK if str(k).lower() in self._fields else self._masked(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._masked(v) for v in value]
        return value
