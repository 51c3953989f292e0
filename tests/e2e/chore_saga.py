"""A saga module for `saga run` in tests/e2e/test_clock_skew.py
(SAGA_MODULES=tests.e2e.chore_saga).

`chore` has one step whose participant (tests/e2e/chore_worker.py) works CHORE_SECONDS of a
30 s timeout, and is retried after a timeout: an attempt timed out early by a clock running
ahead would be dispatched again and run twice, which the worker counts.
"""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator import Retry, Saga

CHORE_SECONDS = 5.0
TIMEOUT = 30.0


class Chore(BaseModel):
    chore_id: str


chore = Saga("chore", version=1, input=Chore, timeout=TIMEOUT)
chore.remote(
    "do_chore",
    command="chores.do",
    compensation=None,
    retry=Retry(max_attempts=3, initial_interval=0.1, jitter=0),
)
