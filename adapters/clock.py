"""The wall clock the adapters give the engine and the participant workers: aware, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
