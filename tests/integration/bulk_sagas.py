"""The saga of the bulk-retry tests (tests/integration/test_bulk_retry.py), in a module of its
own so that the `saga` command they run loads it too (SAGA_MODULES)."""

from __future__ import annotations

from pydantic import BaseModel

from orchestrator import Retry, Saga


class Parcel(BaseModel):
    parcel_id: str


# hold (undoable) -> ship (the pivot) -> notify_customer (past the pivot: retried, then parked)
parcel = Saga("bulk_parcel", version=1, input=Parcel, timeout=10)
parcel.remote("hold", command="depot.hold", compensation="depot.release")
parcel.remote("ship", command="courier.ship", pivot=True)
parcel.remote(
    "notify_customer",
    command="mailer.notify",
    retry=Retry(max_attempts=2, initial_interval=0.05, max_interval=0.05, jitter=0),
)
