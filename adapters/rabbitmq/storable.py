"""What PostgreSQL cannot store, refused before a message is parsed (delivery.parse).

PostgreSQL stores neither a NUL character (in text or jsonb) nor a number that is not
finite (in jsonb; Python reads 1e400 as inf and writes it back as Infinity). A message holding
one would be valid to pydantic, then fail its transaction on every delivery until the broker
dead-lettered it past the delivery limit, without a reason and after a minute of retries.
Found by the message fuzzer (tests/fuzz).
"""

from __future__ import annotations

import math
import re
from typing import Any

import pydantic_core

from orchestrator.errors import Poison

# Cheap looks at the bytes first (about a microsecond for a typical message); the exact check
# (parse and walk) only when there might be one: an escaped NUL not itself escaped, the words
# NaN or Infinity, a 3-digit exponent, a 309-digit run.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_BIG_EXPONENT = re.compile(rb"[eE]\+?\d\d\d")
_LONG_DIGITS = re.compile(rb"\d{309}")


def check_storable(body: bytes) -> None:
    """Raise `Poison` if the JSON `body` holds what PostgreSQL cannot store."""
    if b"\\u0000" in body and _NUL_ESCAPE.search(body):
        raise Poison("the body holds a NUL character (\\u0000), which PostgreSQL cannot store")
    if (
        b"NaN" in body
        or b"Infinity" in body
        or _LONG_DIGITS.search(body)
        or _BIG_EXPONENT.search(body)
    ):
        try:
            data = pydantic_core.from_json(body)
        except ValueError:
            return  # not JSON: validation says so
        if not _finite(data):
            raise Poison(
                "the body holds a number that is not finite (NaN, Infinity, or beyond "
                "1.8e308), which PostgreSQL cannot store"
            )


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True
