"""Bearer tokens with two roles: `read` (every GET) and `operate` (also every POST).

Tokens come from SAGA_API_TOKENS as comma-separated `name:role:token`. Only a SHA-256 digest
of each token is kept, and a presented token is compared with every one of them in constant
time, so neither the answer's timing nor a memory dump gives a token away. Tokens appear in
no log line, error message or response: a malformed entry is named by its position.

With no tokens configured the API is open; the server only allows that on a loopback
address (serve.py refuses anything else).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from adapters.http.problems import ProblemError


class Role(StrEnum):
    READ = "read"
    OPERATE = "operate"  # implies read


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a token's name, or `anonymous` when no tokens are configured."""

    name: str
    role: Role


ANONYMOUS = Caller("anonymous", Role.OPERATE)


@dataclass(frozen=True)
class _Token:
    name: str
    role: Role
    digest: bytes

    def __repr__(self) -> str:  # the digest is no secret, but nothing here needs it shown
        return f"_Token(name={self.name!r}, role={self.role.value!r})"


class Tokens:
    def __init__(self, configured: SecretStr | str) -> None:
        raw = configured.get_secret_value() if isinstance(configured, SecretStr) else configured
        self._tokens = tuple(_parse(raw))

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def identify(self, token: str) -> Caller | None:
        presented = _digest(token)
        found: _Token | None = None
        for known in self._tokens:  # no early exit: every token costs the same
            if hmac.compare_digest(presented, known.digest):
                found = known
        return None if found is None else Caller(found.name, found.role)


def _parse(raw: str) -> list[_Token]:
    """`name:role:token` entries; the token may itself contain colons."""
    tokens: list[_Token] = []
    for n, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        role, _, token = rest.partition(":")
        if not name.strip() or role not in Role.__members__.values() or not token:
            raise ValueError(
                f"SAGA_API_TOKENS entry {n} is not `name:role:token` with role `read` or "
                "`operate` (the entry is not shown: it holds a token)"
            )
        if any(t.name == name.strip() for t in tokens):
            raise ValueError(f"SAGA_API_TOKENS names {name.strip()!r} twice; names must differ")
        tokens.append(_Token(name.strip(), Role(role), _digest(token)))
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


_bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`; GET needs the read role, POST operate.",
)


async def authorize(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller of an /api request, or a 401/403 problem. GET and HEAD need `read`,
    everything else `operate`."""
    tokens: Tokens = request.app.state.tokens
    if not tokens:
        caller = ANONYMOUS
    else:
        if credentials is None:
            raise ProblemError(
                401,
                "unauthenticated",
                "Token required",
                "send `Authorization: Bearer <token>` with a token from SAGA_API_TOKENS",
                headers={"WWW-Authenticate": "Bearer"},
            )
        found = tokens.identify(credentials.credentials)
        if found is None:
            raise ProblemError(
                401,
                "unauthenticated",
                "Unknown token",
                "the bearer token is not one of SAGA_API_TOKENS; check it, or ask for one",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        caller = found
    needed = Role.READ if request.method in ("GET", "HEAD") else Role.OPERATE
    if needed == Role.OPERATE and caller.role != Role.OPERATE:
        raise ProblemError(
            403,
            "forbidden",
            "Operate role required",
            f"token {caller.name!r} has the read role; starting sagas and operator actions "
            "need a token with the operate role",
        )
    request.state.caller = caller
    return caller
