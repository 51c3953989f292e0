"""Configuration: one pydantic-settings object, read only at the composition root."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapters.amqp_urls import node_urls
from adapters.durations import parse_duration
from adapters.redaction import redact_text
from adapters.tls import amqp_url_with_tls, database_url_with_tls


class Settings(BaseSettings):
    """Every field comes from an environment variable with the `SAGA_` prefix.

    Defaults point at PostgreSQL and RabbitMQ on 127.0.0.1, so a local run needs none.
    """

    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/saga",
        description="SQLAlchemy URL of the engine's database (psycopg 3 driver).",
    )
    amqp_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/",
        description="RabbitMQ URL; for a cluster without a load balancer, every node's URL, "
        "comma-separated: a connection goes to one and moves on when that node goes away "
        "(adapters/amqp_urls.py).",
    )
    startup_patience: float = Field(
        60.0,
        ge=0,
        description="Seconds a starting process waits for PostgreSQL and RabbitMQ to answer "
        "(a restart, a deployment coming up) before it gives up; 0 gives up at once.",
    )
    # -- TLS (adapters/tls.py, docs/security.md): folded into the URLs above on load ---------
    amqp_tls_ca_file: str | None = Field(
        None, description="CA bundle (PEM) to verify RabbitMQ's certificate with; turns TLS on."
    )
    amqp_tls_cert_file: str | None = Field(
        None, description="Client certificate (PEM) for RabbitMQ; turns TLS on."
    )
    amqp_tls_key_file: str | None = Field(None, description="The client certificate's key.")
    amqp_tls_verify: bool = Field(
        True,
        description="Verify RabbitMQ's certificate and host name; false turns TLS on without "
        "verification (testing only).",
    )
    database_ssl_mode: str | None = Field(
        None,
        pattern="^(disable|allow|prefer|require|verify-ca|verify-full)$",
        description="libpq sslmode for PostgreSQL; verify-full in production.",
    )
    database_ssl_root_cert: str | None = Field(
        None, description="CA (PEM) to verify PostgreSQL's certificate with (sslrootcert)."
    )
    database_ssl_cert: str | None = Field(None, description="Client certificate (sslcert).")
    database_ssl_key: str | None = Field(None, description="Client key (sslkey).")
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
    dev_redefine: bool = Field(
        False,
        description="Development databases only: a saga version whose definition changed "
        "replaces the registered one at start-up when no unfinished instance runs on it, "
        "instead of refusing to start (docs/versioning.md).",
    )
    detach_after: float = Field(
        60.0,
        gt=0,
        description="Seconds a participant's handler runs holding its command unacked; past "
        "it the worker acks the command and the saga's timeouts cover a crash, so no step "
        "depends on the broker's consumer_timeout. A step with a heartbeat_timeout is acked "
        "once its start report is confirmed (docs/time-limits.md).",
    )
    max_detached: int = Field(
        100,
        ge=0,
        description="Most acked commands whose handlers still run, per participant; beyond "
        "it a command stays unacked until its handler ends.",
    )
    db_pool_size: int = Field(10, ge=1, le=200)
    max_message_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest AMQP message body (start, cancel, reply, command) a consumer "
        "reads; a larger one is dead-lettered unparsed, with the reason.",
    )
    batch_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Most messages handled in one transaction (group commit); 1 turns it off.",
    )
    max_active: int = Field(
        2000,
        ge=0,
        description="Begin a start only while fewer sagas than this are running or "
        "compensating (all replicas together); the others wait in the broker's queue "
        "(adapters/admission.py). 0: no limit.",
    )
    timer_interval: float = Field(0.2, gt=0, description="Seconds between timer sweeps.")
    relay_interval: float = Field(1.0, gt=0, description="Seconds between outbox sweeps.")
    relay_age: float = Field(
        2.0, ge=0, description="Outbox rows older than this (seconds) are republished by the relay."
    )
    clock_skew_max: float = Field(
        5.0,
        gt=0,
        description="Seconds this host's wall clock may differ from the database's: beyond "
        "it `saga run` logs clock_skew, and fails readiness, until it is back within. "
        "Deadlines and timers go by the database's clock either way "
        "(adapters/postgres/dbclock.py).",
    )
    consumer_check_interval: float = Field(
        30.0,
        gt=0,
        description="Seconds between checks that every command queue the loaded sagas send to "
        "has a consumer (adapters/rabbitmq/command_queues.py); the first check waits this long "
        "after start-up too, so participants may come up after the orchestrator.",
    )
    # Off by default: deleting is irreversible and forgets start keys (a start with a pruned
    # saga's key begins a new saga), so each deployment chooses its own window.
    retention: timedelta | None = Field(
        None,
        description="Delete completed, compensated and cancelled sagas this long after they "
        "ended (e.g. 30d, 12h; adapters/postgres/retention.py); unset: keep them forever.",
    )
    retention_archive: str | None = Field(
        None,
        description="A directory where SAGA_RETENTION's sweep writes each batch of sagas, "
        "whole and unmasked, as gzip JSON Lines before deleting them (adapters/archive.py); "
        "a batch it cannot write is not deleted. Checked when `saga run` starts.",
    )
    log_format: str = Field("auto", pattern="^(auto|json|console)$")
    log_level: str = Field("info")
    fault: str | None = Field(
        None, description="Named fault point where the process exits hard (tests only)."
    )
    # -- HTTP API (adapters/http, docs/http-api.md) -----------------------------------------
    http_bind: str = Field(
        "127.0.0.1:8080",
        description="host:port where `saga run` serves the HTTP API and dashboard; empty for "
        "none. A host other than loopback needs api_tokens.",
    )
    api_tokens: SecretStr = Field(
        SecretStr(""),
        description="Bearer tokens, comma-separated `name:role:token`, role `read` or "
        "`operate` (operate implies read). None: the API is open, on loopback only.",
    )
    http_max_body: int = Field(
        1_048_576, ge=1, description="Largest request body the API accepts, in bytes."
    )
    http_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser, comma-separated; none "
        "by default (no CORS headers at all).",
    )
    redact_fields: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "password",
            "secret",
            "token",
            "card_number",
            "cvv",
            "api_key",
            "authorization",
        ],
        description='JSON keys (any case) whose values the API shows as "***", comma-separated.',
    )

    @model_validator(mode="after")
    def _relay_age_exceeds_interval(self) -> Settings:
        # A process deletes the rows it published at its next relay sweep; a relay that took
        # rows younger than that would send every fresh message a second time.
        if self.relay_age <= self.relay_interval:
            raise ValueError(
                f"SAGA_RELAY_AGE ({self.relay_age}) must be greater than SAGA_RELAY_INTERVAL "
                f"({self.relay_interval}): each process deletes what it published at its next "
                "relay sweep, so a shorter age makes relays send fresh messages twice"
            )
        return self

    @field_validator("amqp_url")
    @classmethod
    def _amqp_nodes(cls, value: str) -> str:
        node_urls(value)  # one URL or several of one cluster; raises saying what to write
        return value

    @field_validator("retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = parse_duration(value) if value.strip() else None
        if isinstance(value, timedelta) and value <= timedelta(0):
            raise ValueError("SAGA_RETENTION must be positive (unset it to keep sagas forever)")
        return value

    @field_validator("retention_archive", mode="before")
    @classmethod
    def _archive_directory(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str) and value.strip() == "-":
            raise ValueError(
                "SAGA_RETENTION_ARCHIVE must be a directory (standard output, `-`, is for "
                "`saga prune --archive -`)"
            )
        return value

    @model_validator(mode="after")
    def _archive_needs_retention(self) -> Settings:
        if self.retention_archive is not None and self.retention is None:
            raise ValueError(
                "SAGA_RETENTION_ARCHIVE is set but SAGA_RETENTION is not: set SAGA_RETENTION "
                "(e.g. 30d) for `saga run` to prune and archive, or unset SAGA_RETENTION_ARCHIVE"
            )
        return self

    @model_validator(mode="after")
    def _tls_into_urls(self) -> Settings:
        # In the URLs, every consumer of them (migrations, CLI, health checks) gets TLS too.
        self.amqp_url = ",".join(
            amqp_url_with_tls(
                url,
                ca_file=self.amqp_tls_ca_file,
                cert_file=self.amqp_tls_cert_file,
                key_file=self.amqp_tls_key_file,
                verify=self.amqp_tls_verify,
            )
            for url in node_urls(self.amqp_url)
        )
        self.database_url = database_url_with_tls(
            self.database_url,
            mode=self.database_ssl_mode,
            root_cert=self.database_ssl_root_cert,
            cert=self.database_ssl_cert,
            key=self.database_ssl_key,
        )
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() show the URLs without their passwords: settings get printed in
        # tracebacks, test failures and debugging sessions.
        for name, value in super().__repr_args__():
            yield name, redact_text(value) if isinstance(value, str) else value

    @field_validator("modules", "http_cors_origins", "redact_fields", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value
