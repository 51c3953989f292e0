"""The bench saga: three remote steps a -> b -> c, each one tiny write at the bench participant.

Step c fails (non-retryably) for every tenth saga, by its number, so one saga in ten
compensates b and a. Its number is a search field (one saga_search row per start), as a
business saga would index a customer or an order id; bench.growth times queries on it.
Loaded by `saga run` with SAGA_MODULES=bench.sagas.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import Retry, Saga

FAIL_EVERY = 10


class BenchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(ge=0)


def fails(n: int) -> bool:
    """The deterministic failure rule shared by the engine's participant and the floor."""
    return n % FAIL_EVERY == FAIL_EVERY - 1


saga = Saga("bench", version=1, input=BenchInput, timeout=60, search=("n",))
saga.remote("a", command="bench.a", compensation="bench.undo_a")
saga.remote("b", command="bench.b", compensation="bench.undo_b")
saga.remote("c", command="bench.c", retry=Retry(max_attempts=1), compensation=None)
