"""Errors as `application/problem+json` (RFC 9457): `{"type", "title", "status", "detail"}`,
where `detail` says what was wrong and what to do about it.

Every way a request can fail ends here: the engine's own errors (one table below), request
validation (422), unknown routes and methods, database outages (503), and anything
unexpected (500, logged with its traceback but never with request headers or local
variables, so a token cannot reach the log through an error).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.errors import (
    ConcurrentUpdate,
    InvalidInput,
    NoFilter,
    OperationRefused,
    SagaError,
    SagaNotFound,
    UnknownSaga,
)
from orchestrator.search_filters import InvalidFilter

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE = "urn:saga:problem:"


class Problem(BaseModel):
    """An error: `type` names it for programs, `detail` explains it to people."""

    type: str = Field(examples=["urn:saga:problem:operation-refused"])
    title: str = Field(examples=["Operation refused"])
    status: int = Field(examples=[409])
    detail: str = Field(
        examples=["only a paused saga can be resumed; it is running"],
        description="What was wrong and what to do about it.",
    )


class SignalRefusal(Problem):
    """A refused signal (`type` `urn:saga:problem:signal-refused`): `reason` names why, for
    programs; `detail` says it in words."""

    reason: str = Field(
        examples=["not_waited_for"],
        description="unknown_saga (404), invalid_payload (422), or (409) ambiguous_key, "
        "not_waited_for, finished, wait_over, compensating.",
    )
    signal: str = Field(description="The signal's name, as sent.")
    signal_id: str = Field(description="The signal's id, as sent or made up.")


# The problem bodies the OpenAPI document describes (app.py puts them in its components).
MODELS: tuple[type[Problem], ...] = (Problem, SignalRefusal)


class ProblemError(Exception):
    """Raised by a route to answer with a problem; `members` are extension members the body
    carries besides the standard ones (RFC 9457, section 3.2)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
        *,
        members: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.members = dict(members or {})


def problem(status: int, slug: str, title: str, detail: str, **headers: str) -> JSONResponse:
    return _answer(status, slug, title, detail, members={}, headers=headers)


def _answer(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    members: Mapping[str, Any],
    headers: Mapping[str, str],
) -> JSONResponse:
    body = Problem(type=_TYPE + slug, title=title, status=status, detail=detail).model_dump()
    return JSONResponse(
        {**members, **body}, status_code=status, media_type=PROBLEM_JSON, headers=headers or None
    )


def problem_responses(
    *statuses: int, models: tuple[type[Problem], ...] = (Problem,)
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for these error statuses: each one of `models` (Problems, in
    MODELS) as problem+json."""
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status in statuses
    }


_DESCRIPTIONS = {
    400: "Bad request (e.g. a cursor this API did not issue, a search filter that cannot apply)",
    401: "No token, or not a known one",
    403: "The token's role may not do this",
    404: "No such saga",
    409: "Refused in the saga's current state (the detail says why and what to do)",
    413: "The request body is too large",
    422: "Invalid input (the detail names each field and what is wrong)",
    503: "This process cannot serve the request now",
}

# The engine's errors, most specific first: (status, type, title, advice after the message).
_ENGINE_ERRORS: list[tuple[type[SagaError], int, str, str, str]] = [
    (SagaNotFound, 404, "saga-not-found", "Saga not found", "check the id"),
    (
        OperationRefused,
        409,
        "operation-refused",
        "Operation refused",
        "GET the saga to see where it stands",
    ),
    (
        ConcurrentUpdate,
        409,
        "concurrent-update",
        "Changed meanwhile",
        "the saga changed while this request acted on it: send it again",
    ),
    (InvalidInput, 422, "invalid-input", "Invalid input", "fix the input and send it again"),
    (
        NoFilter,
        422,
        "no-filter",
        "No filter",
        "give `filter` at least one field (e.g. status and step)",
    ),
    (
        InvalidFilter,
        400,
        "bad-filter",
        "Bad search filter",
        "a `where` condition is NAME OP VALUE on a search field of a saga this process loads",
    ),
    (
        UnknownSaga,
        422,
        "unknown-saga",
        "Unknown saga",
        "name a saga (and version) this orchestrator loads (SAGA_MODULES)",
    ),
]


def install(app: FastAPI) -> None:
    """Answer every error of `app` with a problem."""

    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError) -> JSONResponse:
        return _answer(
            exc.status, exc.slug, exc.title, exc.detail, members=exc.members, headers=exc.headers
        )

    @app.exception_handler(SagaError)
    async def _engine_error(_request: Request, exc: SagaError) -> JSONResponse:
        for kind, status, slug, title, advice in _ENGINE_ERRORS:
            if isinstance(exc, kind):
                return problem(status, slug, title, f"{exc}; {advice}")
        return _internal(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(
            422,
            "invalid-request",
            "Invalid request",
            f"{describe_errors(exc.errors())}; fix these and send the request again",
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug, title, advice = _HTTP.get(exc.status_code, ("http-error", "HTTP error", None))
        detail = advice or str(exc.detail)
        return problem(exc.status_code, slug, title, detail, **(exc.headers or {}))

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value (a NUL character, a number JSON cannot hold, ...);
        # only the first line of its message: further lines may quote the value.
        why = str(exc.orig).splitlines()[0] if exc.orig is not None else "invalid value"
        return problem(
            422,
            "unstorable-value",
            "Value cannot be stored",
            f"the database refused a value: {why}; remove it and send the request again",
        )

    @app.exception_handler(DBAPIError)
    async def _database(_request: Request, exc: DBAPIError) -> JSONResponse:
        if not (exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)):
            return _internal(exc)  # not an outage: a bug, or a database not migrated
        log.warning("http_database_unavailable", error_type=type(exc.orig or exc).__name__)
        return problem(
            503,
            "database-unavailable",
            "Database unavailable",
            "the saga database did not answer; try again shortly",
            **{"Retry-After": "5"},
        )


def describe_errors(errors: Any) -> str:
    """pydantic's errors as `where: what` phrases, without the offending input (it may be
    long, or secret)."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ())) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# Starlette's own errors: (type, title, detail; None keeps the exception's detail).
_HTTP: dict[int, tuple[str, str, str | None]] = {
    413: ("body-too-large", "Request body too large", None),
    404: ("not-found", "Not found", "no such endpoint; the API is described at /docs"),
    405: (
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not take that method; see /docs",
    ),
    400: ("bad-request", "Bad request", "the request could not be read; send valid JSON"),
}


def _internal(exc: BaseException) -> JSONResponse:
    # The traceback as text: the code path, no local variables (which may hold a token).
    log.error(
        "http_request_failed",
        error_type=type(exc).__name__,
        traceback="".join(traceback.format_exception(exc)),
    )
    return problem(
        500,
        "internal-error",
        "Internal error",
        "the orchestrator failed to handle this request; its log has the details",
    )


class CatchAll:
    """ASGI middleware: an unexpected exception becomes a 500 problem, logged once here.

    Starlette's own last-resort handler re-raises after answering (to let the server log it),
    and the server's log line would carry the exception with no say over its content.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            response = _internal(exc)
            if started:  # too late to answer: the client sees the connection end
                raise
            await response(scope, receive, send)
