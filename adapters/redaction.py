"""Secrets kept out of logs and printed settings: the password of a URL
(`amqp://user:***@host`), bearer tokens, and the values of keys named like a secret.

Saga data shown to operators is masked by its own list (adapters/saga_redaction.py,
SAGA_REDACT_FIELDS); this is for what the process itself says about its configuration and its
errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# Keys whose values are secrets wherever they appear in a log line.
SECRET_KEYS = frozenset(
    {"password", "passwd", "secret", "token", "api_tokens", "authorization", "api_key", "cookie"}
)
# scheme://user:password@ — the password is whatever lies between the colon and the last @
# before the host (a password may itself hold '@' or ':' if the URL encodes them or not).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s/]*@")
_BEARER = re.compile(r"(?i)(\bbearer\s+)[^\s,;\"']+")
# libpq's key=value form: password=...
_KEYWORD_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)(?:'[^']*'|[^\s]+)")


def redact_text(text: str) -> str:
    """`text` with URL passwords, bearer tokens and `password=` values masked."""
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(rf"\g<1>{MASK}", text)
    if "assword" in text or "ASSWORD" in text:
        text = _KEYWORD_PASSWORD.sub(rf"\g<1>{MASK}", text)
    return text


def redact(value: Any, key: str | None = None) -> Any:
    """A copy of `value` (a log line's fields, at any depth) with every secret masked."""
    if key is not None and key.lower() in SECRET_KEYS and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return value
