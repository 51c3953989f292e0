"""The engine's exception tree. Adapters translate driver errors into these."""

from __future__ import annotations


class SagaError(Exception):
    """Base of every error the engine raises on purpose."""


class DefinitionError(SagaError):
    """A saga definition breaks a rule; the message says what to change."""


class MissingDefinition(DefinitionError):
    """Unfinished instances run a saga version this process does not load; says which."""


class DefinitionConflict(SagaError):
    """A registered (name, version) exists with different steps: bump the version."""


class UnknownSaga(SagaError):
    """A start names a saga (or version) no loaded module defines."""


class InvalidInput(SagaError):
    """A start's input does not validate against the saga's input model."""


class SagaNotFound(SagaError):
    """No saga instance has that id or key."""


class OperationRefused(SagaError):
    """An operator action is not allowed in the saga's current state; says why."""


class ConcurrentUpdate(SagaError):
    """A guarded write found the saga changed by someone else since it was read; retry."""


class Poison(SagaError):
    """An inbound message that can never be processed: dead-letter it with this reason."""
