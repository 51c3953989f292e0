"""`create_app`: the HTTP face of an orchestrator process — the JSON API (/api, with its
OpenAPI document at /openapi.json, browsable at /docs and /redoc), the dashboard (/), and the
observability endpoints (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import time
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.http import dashboard, observability, problems
from adapters.http.api import bulk, reads, signals, writes
from adapters.http.api.context import ApiContext
from adapters.http.auth import Tokens
from adapters.http.body_limit import BodyLimit
from adapters.postgres.store import PostgresStore
from adapters.saga_redaction import Redactor
from adapters.settings import Settings
from orchestrator.engine import Engine
from orchestrator.registry import Registry

log = structlog.get_logger(__name__)

DESCRIPTION = """Operate sagas: list and inspect them, start them, cancel them, send them
signals, and every operator action (retry, pause, resume, skip a step, mark a compensation
done), each recorded in the saga's history with who and why.

Authenticate with `Authorization: Bearer <token>` (SAGA_API_TOKENS): GET needs the `read`
role, POST `operate`. Errors are `application/problem+json` whose `detail` says what to do.
See docs/http-api.md."""


def create_app(
    settings: Settings,
    store: PostgresStore,
    engine: Engine | None = None,
    *,
    probes: observability.Probes | None = None,
    unconsumed_queues: observability.Unconsumed | None = None,
    amqp_blocked: observability.Alarm | None = None,
    clock_skew: observability.Alarm | None = None,
    registry: Registry | None = None,
) -> FastAPI:
    """The app for `settings`; `engine` None makes a read-only app (writes answer 503).
    `unconsumed_queues`: the command queues without a consumer at the last check, which
    `/readyz` lists (`saga run` passes its check's). `amqp_blocked`: the alarm the broker
    blocks the engine's publishing for, if any, which makes `/readyz` 503 (`saga run` passes
    its connection's). `clock_skew`: how far the host's clock is off the database's, when
    beyond SAGA_CLOCK_SKEW_MAX, which makes `/readyz` 503 too (`saga run` passes its database
    clock's). `registry`: the definitions that tell
    a saga's wait steps apart (default: the engine's; none for a read-only app). Raises
    ValueError for malformed SAGA_API_TOKENS."""
    # /docs and /redoc with Swagger UI's and ReDoc's files served from here, not a CDN: the
    # pages work on a host with no way out to the internet.
    app = FastAPIOffline(
        static_url="/docs-assets",
        title="Saga orchestrator",
        version="1",
        description=DESCRIPTION,
        openapi_tags=[{"name": "sagas", "description": "Sagas and operator actions."}],
    )
    app.state.tokens = Tokens(settings.api_tokens)
    if registry is None:
        registry = engine.registry if engine is not None else Registry()
    app.state.saga_api = ApiContext(store, engine, Redactor(settings.redact_fields), registry)
    # For the dashboard and the observability endpoints.
    app.state.settings = settings
    app.state.store = store
    app.state.db_engine = store.db_engine
    app.state.engine = engine
    app.state.probes = probes
    app.state.unconsumed_queues = unconsumed_queues
    app.state.amqp_blocked = amqp_blocked
    app.state.clock_skew = clock_skew
    problems.install(app)
    _describe_problems(app)
    app.include_router(reads.router)
    app.include_router(writes.router)
    app.include_router(bulk.router)
    app.include_router(signals.router)
    app.include_router(observability.router)
    app.include_router(dashboard.router)
    # Added innermost first: a request passes CORS, then the body cap, then the log line and
    # the last-resort handler, then the routes.
    app.add_middleware(problems.CatchAll)
    app.add_middleware(RequestLog)
    app.add_middleware(BodyLimit, limit=settings.http_max_body)
    if settings.http_cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.http_cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app, as committed in docs/openapi.json (`saga openapi`).
    Made from the defaults, not the environment, and without connecting to anything."""
    from adapters.postgres.database import make_engine

    store = PostgresStore(make_engine("postgresql+psycopg://localhost/openapi"))  # never used
    return create_app(Settings.model_construct(), store).openapi()


def _describe_problems(app: FastAPI) -> None:
    """Put the Problem schema into the OpenAPI components: the error responses refer to it
    under `application/problem+json`, a media type FastAPI documents no model for itself."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in problems.MODELS:
                schemas[model.__name__] = model.model_json_schema()
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


class RequestLog:
    """One line per request: method, path, status, time taken and the caller's token name —
    never a header, so never a token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        finally:
            caller = getattr(scope.get("state", {}).get("caller"), "name", None)
            log.info(
                "http_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - began) * 1000, 1),
                caller=caller,
            )
