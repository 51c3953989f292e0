"""This host's wall clock, aware, in UTC: for a participant worker without a database whose
clock it could go by. `saga run`, the CLI's operator actions and participants with a database
go by the database's clock (adapters/postgres/dbclock.py)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
