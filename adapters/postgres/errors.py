"""Driver errors the adapter expects, translated into the engine's own at the boundary.

Anything else (connection lost, server shutting down) passes through unchanged: the caller
decides whether to retry it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError

from orchestrator.errors import ConcurrentUpdate, SagaError, SagaNotFound

_SERIALIZATION_FAILURE = "40001"
_DEADLOCK = "40P01"
_UNIQUE_VIOLATION = "23505"
_FOREIGN_KEY_VIOLATION = "23503"


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        error = _translate(exc)
        if error is None:
            raise
        raise error from exc


def _translate(exc: DBAPIError) -> SagaError | None:
    code = getattr(exc.orig, "sqlstate", None)
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
    if code in (_SERIALIZATION_FAILURE, _DEADLOCK):
        return ConcurrentUpdate(f"lost a race with another transaction ({code}); retry")
    if code == _UNIQUE_VIOLATION and constraint == "pk_saga_history":
        # Only possible when a writer appended without holding the saga's lock.
        return ConcurrentUpdate("another transaction appended to this saga's history; retry")
    if code == _FOREIGN_KEY_VIOLATION and constraint in (
        "fk_saga_history_saga_id_saga_instances",
        "fk_saga_steps_saga_id_saga_instances",
        "fk_saga_search_saga_id_saga_instances",
    ):
        return SagaNotFound(f"no saga instance for this write ({constraint})")
    return None
