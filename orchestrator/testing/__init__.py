"""A test kit for saga definitions: run a saga in memory with a virtual clock and scripted
participants, then assert on what it sent and how it ended (docs/testing-sagas.md).

    t = SagaTest(order_saga, input={...})
    t.script("payments.charge", fail("card_declined", retryable=False))
    t.run()
    assert t.status == "compensated"
"""

from orchestrator.testing.answers import (
    Answer,
    answer_after,
    fail,
    heartbeat,
    no_answer,
    succeed,
)
from orchestrator.testing.saga_test import SAGA_ID, START, SagaTest
from orchestrator.testing.scripts import Delivery, SagaTestError

__all__ = [
    "SAGA_ID",
    "START",
    "Answer",
    "Delivery",
    "SagaTest",
    "SagaTestError",
    "answer_after",
    "fail",
    "heartbeat",
    "no_answer",
    "succeed",
]
