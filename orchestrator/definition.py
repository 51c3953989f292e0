"""The saga definition DSL, as saga modules import it: `from orchestrator.definition import
Saga, GuardContext, StepContext`.

A `Saga` (orchestrator/saga.py) is an ordered list of steps (orchestrator/steps.py), each
checked as it is added against the rules of orchestrator/definition_rules.py.
"""

from orchestrator.saga import (
    DEFAULT_CHILD_TIMEOUT,
    DEFAULT_COMPENSATION_RETRY,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    Saga,
)
from orchestrator.search_fields import SearchField
from orchestrator.steps import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_ITEMS,
    UNSET,
    ChildInput,
    Guard,
    GuardContext,
    Items,
    LocalHandler,
    OnGuardFalse,
    OnTimeout,
    Output,
    Payload,
    StepContext,
    StepDefinition,
    Unset,
    Until,
)

__all__ = [
    "DEFAULT_CHILD_TIMEOUT",
    "DEFAULT_COMPENSATION_RETRY",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "UNSET",
    "ChildInput",
    "Guard",
    "GuardContext",
    "Items",
    "LocalHandler",
    "OnGuardFalse",
    "OnTimeout",
    "Output",
    "Payload",
    "Saga",
    "SearchField",
    "StepContext",
    "StepDefinition",
    "Unset",
    "Until",
]
