"""Retry policy: how often and how fast a failed step or compensation is tried again."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator

from orchestrator.error_info import ErrorInfo


class Retry(BaseModel):
    """A validated retry policy, attached to a step's action or its compensation."""

    # No inf/nan: a wait must fit in a timedelta.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_attempts: int | None = Field(
        3, ge=1, description="Attempts in all, the first one included; None retries forever."
    )
    initial_interval: float = Field(
        1.0, gt=0, description="Seconds to wait before the second attempt."
    )
    multiplier: float = Field(2.0, ge=1.0, description="Each wait is the previous one times this.")
    max_interval: float = Field(60.0, gt=0, description="No wait is longer than this, in seconds.")
    jitter: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Fraction of each wait that is randomised, so many sagas' retries spread out.",
    )
    non_retryable: frozenset[str] = Field(
        frozenset(),
        description="Error types (a reply's error.type, e.g. 'card_declined') never retried, "
        "whatever the reply's own `retryable` says.",
    )

    @model_validator(mode="after")
    def _intervals_ordered(self) -> Retry:
        if self.max_interval < self.initial_interval:
            raise ValueError(
                f"max_interval ({self.max_interval}) must be >= initial_interval "
                f"({self.initial_interval})"
            )
        return self

    @field_serializer("non_retryable")
    def _sorted(self, types: frozenset[str]) -> list[str]:
        # Sorted: the definition's fingerprint is computed over this dump.
        return sorted(types)

    def exhausted(self, attempts_made: int) -> bool:
        return self.max_attempts is not None and attempts_made >= self.max_attempts

    def retries(self, error: ErrorInfo) -> bool:
        """Whether this error may be retried at all: the participant did not say no, and the
        step does not declare its type non-retryable."""
        return error.retryable is not False and error.type not in self.non_retryable

    def delay(self, attempts_made: int, seed: str) -> timedelta:
        """Wait before attempt ``attempts_made + 1``.

        The jitter is derived from ``seed`` (the failed command's id) instead of a random
        generator, so the state machine stays pure and a replayed decision waits the same.
        """
        try:
            grown = self.initial_interval * self.multiplier ** max(attempts_made - 1, 0)
        except OverflowError:  # a long policy (thousands of attempts) outgrows a float
            grown = self.max_interval
        base = min(grown, self.max_interval)
        digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
        unit = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
        factor = 1.0 - self.jitter + 2 * self.jitter * unit
        # Jitter spreads the wait but never past max_interval, as the field promises.
        return timedelta(seconds=min(base * factor, self.max_interval))
