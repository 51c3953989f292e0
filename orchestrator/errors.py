"""The engine's exception tree. Adapters translate driver errors into these."""

from __future__ import annotations

from collections.abc import Sequence


class SagaError(Exception):
    """Base of every error the engine raises on purpose."""


class DefinitionError(SagaError):
    """A saga definition breaks a rule; the message says what to change."""


class MissingDefinition(DefinitionError):
    """Unfinished instances run a saga version this process does not load; says which."""


class DefinitionConflict(SagaError):
    """A registered (name, version) exists with different contents: bump the version. Says
    what changed (orchestrator/definition_diff.py)."""

    def __init__(self, name: str, version: int, changes: list[str]) -> None:
        self.name = name
        self.version = version
        self.changes = changes
        listed = "; ".join(changes) or "the fingerprint differs"
        super().__init__(
            f"saga {name!r} version {version} is registered already with other contents "
            f"({listed}): bump the version in the definition (running instances keep the "
            f"old one), or on a development database with no unfinished instance of "
            f"v{version}, set SAGA_DEV_REDEFINE=true to replace it"
        )


class UnknownSaga(SagaError):
    """A start names a saga (or version) no loaded module defines."""


class InvalidInput(SagaError):
    """A start's input does not validate against the saga's input model."""


class SagaNotFound(SagaError):
    """No saga instance has that id or key."""


class OperationRefused(SagaError):
    """An operator action is not allowed in the saga's current state; says why."""


class NoFilter(SagaError):
    """A bulk action was given no filter: it would act on every saga. Says to name them."""


class ConcurrentUpdate(SagaError):
    """A guarded write found the saga changed by someone else since it was read; retry."""


class PublishFailed(SagaError):
    """The broker did not confirm every message of a publish: nacked, unroutable, or the
    channel or connection failed.

    `failures` holds (message_id, reason) for each message that was not confirmed; the
    others of the batch were confirmed and will be delivered.
    """

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        shown = "; ".join(f"{mid}: {why}" for mid, why in self.failures[:5])
        more = f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
        super().__init__(
            f"{len(self.failures)} message(s) not confirmed by the broker: {shown}{more}"
        )


class Poison(SagaError):
    """An inbound message that can never be processed: dead-letter it with this reason."""
