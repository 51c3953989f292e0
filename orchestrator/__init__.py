"""Saga orchestration engine core: definitions, the pure state machine, ports, the engine.

Imports no infrastructure (no sqlalchemy, psycopg, aio_pika, fastapi, os.environ).
"""

from orchestrator.errors import (
    DefinitionConflict,
    DefinitionError,
    InvalidInput,
    MissingDefinition,
    OperationRefused,
    SagaError,
    SagaNotFound,
    UnknownSaga,
)
from orchestrator.messages import CancelSaga, Command, OutcomeEvent, Reply, ReplyError, StartSaga
from orchestrator.retry import Retry
from orchestrator.saga import Saga
from orchestrator.search_fields import SearchField
from orchestrator.state import SagaState, SagaStatus, StepState, StepStatus
from orchestrator.steps import StepContext, StepDefinition

__all__ = [
    "CancelSaga",
    "Command",
    "DefinitionConflict",
    "DefinitionError",
    "InvalidInput",
    "MissingDefinition",
    "OperationRefused",
    "OutcomeEvent",
    "Reply",
    "ReplyError",
    "Retry",
    "Saga",
    "SagaError",
    "SagaNotFound",
    "SagaState",
    "SagaStatus",
    "SearchField",
    "StartSaga",
    "StepContext",
    "StepDefinition",
    "StepState",
    "StepStatus",
    "UnknownSaga",
]
