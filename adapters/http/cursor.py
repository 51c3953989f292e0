"""The list's page cursor: the (updated_at, saga_id) of a page's last saga, opaque to clients
(base64url), so the keyset it holds can change without breaking them."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from uuid import UUID


class BadCursor(ValueError):
    """Not a cursor this API issued."""


def encode(updated_at: datetime, saga_id: UUID) -> str:
    raw = f"{updated_at.isoformat()}|{saga_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, saga_id = raw.partition("|")
        updated_at = datetime.fromisoformat(moment)
        parsed = UUID(saga_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor(cursor) from exc
    if updated_at.tzinfo is None:
        raise BadCursor(cursor)
    return updated_at, parsed
