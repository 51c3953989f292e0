"""In-memory fakes of the ports, for fast unit tests. They pass the same contract tests as
the real adapters (tests/contract)."""

from adapters.memory.store import MemoryStore, MemoryTransaction

__all__ = ["MemoryStore", "MemoryTransaction"]
