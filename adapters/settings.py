"""Configuration: one pydantic-settings object, read only at the composition root."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every field comes from an environment variable with the `SAGA_` prefix.

    Defaults point at PostgreSQL and RabbitMQ on 127.0.0.1, so a local run needs none.
    """

    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/saga",
        description="SQLAlchemy URL of the engine's database (psycopg 3 driver).",
    )
    amqp_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL.")
    amqp_prefix: str = Field(
        "",
        description="Prefix for every exchange and queue name; empty in production. "
        "Tests use it to isolate themselves on one broker.",
    )
    modules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sagas.order"],
        description="Python modules holding saga definitions, comma-separated.",
    )
    prefetch: int = Field(50, ge=1, le=10_000, description="Unacked messages per consumer.")
    db_pool_size: int = Field(10, ge=1, le=200)
    timer_interval: float = Field(0.2, gt=0, description="Seconds between timer sweeps.")
    relay_interval: float = Field(1.0, gt=0, description="Seconds between outbox sweeps.")
    relay_age: float = Field(
        2.0, ge=0, description="Outbox rows older than this (seconds) are republished by the relay."
    )
    log_format: str = Field("auto", pattern="^(auto|json|console)$")
    log_level: str = Field("info")
    fault: str | None = Field(
        None, description="Named fault point where the process exits hard (tests only)."
    )

    @field_validator("modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value
