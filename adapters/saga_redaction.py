"""Saga data masked by SAGA_REDACT_FIELDS, the same on every path that shows a saga: the
HTTP API (and so the dashboard) and the CLI over the database (`saga status`, `saga list
--json`, `saga history`), where `--reveal` lifts it, logged (adapters/cli/support.py).

The value of any JSON object key named in the list (compared without regard to case, at any
depth) is shown as "***": in a saga's input, output and error, its steps' results, payloads
and errors, and its history's details. The database keeps the real values — participants need
them — and so does `saga prune --archive`, an audit trail (adapters/archive.py).

Secrets in logs and printed settings are adapters/redaction.py's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from orchestrator.ports import HistoryRecord
from orchestrator.state import SagaState

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

    def state(self, state: SagaState) -> SagaState:
        """The saga with every value the API masks masked."""
        steps = tuple(
            replace(s, result=self(s.result), error=self(s.error), payload=self(s.payload))
            for s in state.steps
        )
        return replace(
            state,
            input=self(state.input),
            output=self(state.output),
            error=self(state.error),
            steps=steps,
        )

    def history(self, records: Sequence[HistoryRecord]) -> list[HistoryRecord]:
        """The history with each detail masked."""
        return [replace(r, detail=self(r.detail)) for r in records]

    def _masked(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: MASK if str(k).lower() in self._fields else self._masked(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self._masked(v) for v in value]
        return value
